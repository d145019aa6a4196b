"""CORS for /api/v1/: answer preflights and label every response, for embedded chat widgets.

django-cors-headers answers preflights with a fixed header list; Flowise's widget and SDKs send
whatever headers their host page adds, so preflights here echo the requested headers.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

API_PREFIX = "/api/v1/"
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"


def _allow_origin(origin: str | None) -> str | None:
    origins = settings.CORS_ORIGINS
    if "*" in origins:
        return "*"
    if origin and origin.rstrip("/") in {o.rstrip("/") for o in origins}:
        return origin
    return None


def _label(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    allowed = _allow_origin(request.headers.get("Origin"))
    if allowed:
        response["Access-Control-Allow-Origin"] = allowed
        if allowed != "*":
            # Add to Vary, keeping what other middleware put there (e.g. Cookie).
            patch_vary_headers(response, ("Origin",))
    return response


def _preflight(request: HttpRequest) -> HttpResponse | None:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    asked = request.headers.get("Access-Control-Request-Headers")
    response["Access-Control-Allow-Headers"] = asked or "Content-Type, Authorization"
    response["Access-Control-Max-Age"] = "86400"
    return _label(request, response)


class CorsMiddleware:
    """Answer CORS preflights and add Access-Control-Allow-Origin under /api/v1/."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self.__acall__(request)
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        return _preflight(request) or _label(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest):
        if not request.path.startswith(API_PREFIX):
            return await self.get_response(request)
        preflight = _preflight(request)
        if preflight is not None:
            return preflight
        return _label(request, await self.get_response(request))
