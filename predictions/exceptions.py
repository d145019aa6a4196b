"""PredictionError hierarchy with stable codes, and the API error shape (Flowise plus `code`)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from predictions.engine import EngineError

logger = logging.getLogger(__name__)


class PredictionError(Exception):
    """An error with a stable snake_case code and the HTTP status it answers with."""

    code = "prediction_error"
    status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.headers = headers or {}


class BadRequest(PredictionError):
    code = "bad_request"
    status = 400


class Unauthorized(PredictionError):
    code = "unauthorized"
    status = 401


class Forbidden(PredictionError):
    code = "forbidden"
    status = 403


class NotFound(PredictionError):
    code = "not_found"
    status = 404


class PayloadTooLarge(PredictionError):
    code = "payload_too_large"
    status = 413


class QueueUnavailable(PredictionError):
    code = "queue_unavailable"
    status = 503


class PredictionTimeout(PredictionError):
    code = "prediction_timeout"
    status = 504


class DatabaseUnavailable(PredictionError):
    code = "database_unavailable"
    status = 503


def outage_error(exc: BaseException) -> PredictionError | None:
    """Return the 503 for a backing service that is away (database, Redis), else None.

    Only connection-level failures count: a query error is a bug and stays a 500.
    """
    if isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError):
        logger.warning("database unavailable: %s", exc)
        return DatabaseUnavailable(
            "The database is unavailable right now; retry in a few seconds",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionError):
        logger.warning("queue (Redis) unavailable: %s", exc)
        return QueueUnavailable(
            "The queue is unavailable right now; retry in a few seconds",
            headers={"Retry-After": "5"},
        )
    return None


def chatflow_not_found(chatflow_id: object) -> NotFound:
    return NotFound(f"Chatflow {chatflow_id} not found", code="chatflow_not_found")


def from_engine_error(exc: EngineError) -> PredictionError:
    """Map an engine error to an API error (flow errors 400, provider errors 502/504)."""
    status = getattr(exc, "http_status", None) or (
        400 if exc.code in _FLOW_CODES or exc.code == "prompt_error" else 500
    )
    return PredictionError(exc.message, code=exc.code, status=status)


_FLOW_CODES = {
    "invalid_flow",
    "invalid_flow_json",
    "unknown_node_type",
    "dangling_reference",
    "flow_cycle",
    "no_ending_node",
    "missing_input",
}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"statusCode": status, "success": False, "message": message, "stack": {}, "code": code}


def error_response(exc: PredictionError) -> JsonResponse:
    response = JsonResponse(error_body(exc.status, exc.code, exc.message), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


_DRF_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error in Flowise's shape with a stable code."""
    if isinstance(exc, EngineError):
        exc = from_engine_error(exc)
    exc = outage_error(exc) or exc
    if isinstance(exc, PredictionError):
        return Response(
            error_body(exc.status, exc.code, exc.message), status=exc.status, headers=exc.headers
        )
    if isinstance(exc, Http404):
        return Response(error_body(404, "not_found", str(exc) or "Not found"), status=404)
    if isinstance(exc, DjangoValidationError):
        return Response(error_body(400, "bad_request", _flatten(exc.messages)), status=400)
    if isinstance(exc, drf_exceptions.APIException):
        status = exc.status_code
        if isinstance(exc, drf_exceptions.NotAuthenticated):
            status = 401
        code = _DRF_CODES.get(status, "error")
        if isinstance(exc, drf_exceptions.ParseError):
            code = "malformed_json"
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        return Response(
            error_body(status, code, _flatten(exc.detail)), status=status, headers=headers
        )
    return None
