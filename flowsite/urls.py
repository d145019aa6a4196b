"""Root routes: the queue dashboard, admin, the REST API and its docs, health, the chat pages."""

from pathlib import Path

import drf_spectacular_sidecar
from django.contrib import admin
from django.urls import include, path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from flowsite import health
from predictions.urls import app_name as predictions_app
from predictions.urls import prediction_route
from queueadmin.metrics import metrics_view

# Swagger UI's assets come from drf-spectacular-sidecar (no CDN); daphne serves no static files.
SIDECAR_STATIC = Path(drf_spectacular_sidecar.__file__).resolve().parent / "static"

urlpatterns = [
    path("api/v1/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path(
        "static/drf_spectacular_sidecar/<path:path>",
        serve,
        {"document_root": SIDECAR_STATIC / "drf_spectacular_sidecar"},
        name="sidecar-static",
    ),
    path("admin/queues/", include("queueadmin.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("predictions.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("queueadmin.static_urls")),
    path("", include("predictions.web_urls")),
]

# Cookie-less requests reach these without the middleware chain (flowsite.handler.DirectRoutes);
# each is also in urlpatterns, where everything else reaches it.
direct_urlpatterns = [path("api/v1/", include(([prediction_route], predictions_app)))]
