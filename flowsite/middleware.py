"""Middleware: CORS for /api/v1/, and Django's own middleware run without thread hand-offs.

CORS: answer preflights and label every response, for embedded chat widgets.

django-cors-headers answers preflights with a fixed header list; Flowise's widget and SDKs send
whatever headers their host page adds, so preflights here echo the requested headers.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as message_middleware
from django.contrib.messages.storage import default_storage
from django.contrib.sessions import middleware as session_middleware
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.cache import patch_vary_headers
from django.utils.functional import SimpleLazyObject, empty

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
    allowed = _allow_origin(request.META.get("HTTP_ORIGIN"))  # request.headers copies them all
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
        return self.process_request(request) or self.process_response(
            request, self.get_response(request)
        )

    async def __acall__(self, request: HttpRequest):
        return self.process_request(request) or self.process_response(
            request, await self.get_response(request)
        )

    # Hooks, also run without the chain by flowsite.handler.DirectRoutes.

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        return _preflight(request) if request.path.startswith(API_PREFIX) else None

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return _label(request, response) if request.path.startswith(API_PREFIX) else response


# --- Django's middleware, without a thread per hook -------------------------------------------


class InlineMiddlewareMixin:
    """Run a Django MiddlewareMixin's hooks on the event loop under ASGI.

    Django runs every sync hook of every middleware through `sync_to_async` under ASGI: about
    ten thread hand-offs per request around the view, a fifth of the web process's CPU for a
    prediction (measured with py-spy, bench/README.md). The hooks of the middleware below do no
    I/O, except where `needs_thread` says so (a session to save, messages to store, CSRF tokens
    kept in the session); only then does a hook go to a thread, as Django would. Sync mode
    (WSGI, the test client) is unchanged.

    `only_for_cookies`: the middleware acts on what a request's cookies carry (a session, its
    user, messages, a CSRF token) and changes nothing for a request without cookies to a view
    that is exempt from CSRF and uses none of them; flowsite.handler.DirectRoutes skips it then.
    """

    only_for_cookies = False

    def needs_thread(self, request: HttpRequest, response: HttpResponse | None) -> bool:
        return False

    async def __acall__(self, request: HttpRequest):
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.needs_thread(request, None):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(InlineMiddlewareMixin, security.SecurityMiddleware):
    pass


class CommonMiddleware(InlineMiddlewareMixin, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(InlineMiddlewareMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(InlineMiddlewareMixin, auth_middleware.AuthenticationMiddleware):
    """Sets the lazy `request.user` and `request.auser` (no query until they are used)."""

    only_for_cookies = True


class SessionMiddleware(InlineMiddlewareMixin, session_middleware.SessionMiddleware):
    only_for_cookies = True

    def needs_thread(self, request: HttpRequest, response: HttpResponse | None) -> bool:
        session = getattr(request, "session", None)
        return (
            response is not None
            and session is not None
            and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)
        )


class MessageMiddleware(InlineMiddlewareMixin, message_middleware.MessageMiddleware):
    """Django's, with the message storage built on first use.

    Building it signs nothing but derives a cookie signer's keys, which cost more than the rest
    of the middleware together; only admin pages use messages, API requests never do.
    """

    only_for_cookies = True

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not _messages_used(request):
            return response
        return super().process_response(request, response)

    def needs_thread(self, request: HttpRequest, response: HttpResponse | None) -> bool:
        if response is None or not _messages_used(request):
            return False
        storage = request._messages
        return storage.used or storage.added_new


def _messages_used(request: HttpRequest) -> bool:
    storage = getattr(request, "_messages", None)
    if isinstance(storage, SimpleLazyObject):
        return storage._wrapped is not empty
    return storage is not None


class CsrfViewMiddleware(InlineMiddlewareMixin, csrf.CsrfViewMiddleware):
    only_for_cookies = True

    def needs_thread(self, request: HttpRequest, response: HttpResponse | None) -> bool:
        return settings.CSRF_USE_SESSIONS

    @property
    def process_view(self):  # type: ignore[override]
        # Django adapts the hook it finds when it builds the chain: give the async handler a
        # coroutine (no thread), and sync mode the plain method.
        if not getattr(self, "async_mode", False) or settings.CSRF_USE_SESSIONS:
            return super().process_view
        check = super().process_view

        async def aprocess_view(request, callback, callback_args, callback_kwargs):
            return check(request, callback, callback_args, callback_kwargs)

        return aprocess_view
