"""The OpenAPI schema at /api/v1/schema describes every route; the docs page needs no CDN."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from predictions.urls import urlpatterns

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/v1/schema", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _path(route) -> str:
    return "/api/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(route.pattern))


def test_schema_is_valid_openapi(schema):
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


def test_every_route_is_in_the_schema(schema):
    documented = set(schema["paths"])
    assert {_path(route) for route in urlpatterns} == documented


@pytest.mark.parametrize("route", urlpatterns, ids=lambda r: r.name)
def test_every_operation_documents_its_errors_in_the_error_shape(schema, route):
    operations = schema["paths"][_path(route)]
    assert operations
    for method, operation in operations.items():
        errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
        assert errors, f"{method} {route.name} documents no errors"
        for response in errors.values():
            assert response["content"]["application/json"]["schema"]["$ref"] == ERROR_REF


def test_drf_methods_match_the_views(schema):
    from rest_framework.views import APIView

    for route in urlpatterns:
        view = getattr(route.callback, "cls", None)
        if view is None or not issubclass(view, APIView):
            continue
        methods = {m for m in ("get", "post", "put", "delete") if hasattr(view, m)}
        assert set(schema["paths"][_path(route)]) == methods, route.name


def test_management_operations_require_credentials_and_public_ones_do_not(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security")
            public = path.startswith(
                ("/api/v1/ping", "/api/v1/chatflows-streaming", "/api/v1/public-chatbotConfig")
            )
            open_or_key = path.startswith(("/api/v1/prediction", "/api/v1/chatmessage/abort"))
            if public or open_or_key:
                assert {} in security, (method, path)
            else:
                assert security, (method, path)
                assert {} not in security, (method, path)


def test_schema_and_docs_are_public_and_the_docs_use_local_assets():
    client = Client()
    assert client.get("/api/v1/schema").status_code == 200
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    html = docs.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    bundle = next(a for a in assets if a.endswith("swagger-ui-bundle.js"))
    asset = client.get(bundle)
    assert asset.status_code == 200
    assert b"".join(asset.streaming_content)
