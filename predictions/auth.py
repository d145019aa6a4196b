"""Bearer API keys: the management key for the management API, chatflow keys for predictions."""

from __future__ import annotations

from typing import Any

from django.middleware.csrf import CsrfViewMiddleware
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from predictions.exceptions import Forbidden, Unauthorized
from predictions.models import ApiKey, Chatflow, hash_api_key


def bearer_token(headers: Any) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    value = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyPrincipal:
    """The 'user' of a request authenticated with a management key."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.username = f"apikey:{key.name}"
        self.pk = None

    def __str__(self) -> str:
        return self.username


class ManagementKeyAuthentication(BaseAuthentication):
    """Authenticate `Authorization: Bearer <key>` where the key may manage."""

    def authenticate(self, request):
        header = get_authorization_header(request).decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        key = ApiKey.objects.active().filter(key_hash=hash_api_key(token.strip())).first()
        if key is None or not key.can_manage:
            raise Unauthorized("Invalid or non-management API key", code="invalid_api_key")
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request) -> str:
        return "Bearer"


class IsStaffOrManagementKey(BasePermission):
    """Staff sessions and management keys; never anonymous."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if isinstance(request.auth, ApiKey):
            return request.auth.can_manage
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: Any, reason: str) -> str:  # type: ignore[override]
        return reason


def check_session_csrf(request: Any) -> None:
    """Raise Forbidden when an unsafe session-authenticated request fails Django's CSRF check.

    The prediction views are csrf_exempt (API clients send keys, not cookies); a staff session
    standing in for a chatflow's key must still come from our own pages, as in DRF.
    """
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        return
    check = _CsrfCheck(lambda _request: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise Forbidden(f"CSRF failed: {reason}", code="csrf_failed")


async def aauthorize_chatflow(request: Any, chatflow: Chatflow) -> None:
    """Raise Unauthorized unless the request may use this chatflow's predictions.

    A chatflow without a key is open to all; with a key, its key, a management key or a
    staff session (passing the CSRF check on unsafe methods) is needed.
    """
    if chatflow.api_key_id is None:
        return
    token = bearer_token(request.headers)
    if token:
        key = await ApiKey.objects.active().filter(key_hash=hash_api_key(token)).afirst()
        if key is not None and (key.id == chatflow.api_key_id or key.can_manage):
            return
        raise Unauthorized("Invalid API key for this chatflow", code="invalid_api_key")
    user = await request.auser() if hasattr(request, "auser") else None
    if user is not None and user.is_authenticated and user.is_staff and user.is_active:
        check_session_csrf(request)
        return
    raise Unauthorized(
        "This chatflow requires an API key: send 'Authorization: Bearer <key>'",
        code="api_key_required",
    )
