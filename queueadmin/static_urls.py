"""Serve the Django admin's CSS and JS at /static/admin/ from the ASGI server itself.

daphne serves no static files, and the dashboard is an admin page: without these it would be
unstyled. Files are read from the installed Django, so `collectstatic` is not needed; a proxy or
CDN in front may serve STATIC_ROOT instead.
"""

from pathlib import Path

import django.contrib.admin
from django.urls import path
from django.views.static import serve

ADMIN_STATIC = Path(django.contrib.admin.__file__).resolve().parent / "static" / "admin"

urlpatterns = [
    path("static/admin/<path:path>", serve, {"document_root": ADMIN_STATIC}, name="admin-static"),
]
