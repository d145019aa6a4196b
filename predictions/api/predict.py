"""Async prediction views: predict (JSON or SSE), attach to events, cancel, abort by chat."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import IntegrityError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from flowsite.handler import hand_back_request_thread
from predictions import clients, ratelimit, relay, selectors, services
from predictions.api import limits
from predictions.auth import aauthorize_chatflow
from predictions.events import get_transport
from predictions.exceptions import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PredictionError,
    PredictionTimeout,
    chatflow_not_found,
    error_response,
    outage_error,
)
from predictions.models import Chatflow, Prediction, PredictionStatus
from predictions.overrides import allowed_overrides
from predictions.streaming import SSE_HEARTBEAT, TERMINAL_EVENT, Event, sse_frame

logger = logging.getLogger(__name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}

# HTTP status of a failed prediction, by error code (anything else: 500).
_FAILURE_STATUS = {
    "prediction_timeout": 504,
    "provider_timeout": 504,
    "provider_unauthorized": 502,
    "provider_rate_limited": 502,
    "provider_unreachable": 502,
    "provider_bad_response": 502,
    "worker_lost": 502,
    "queue_unavailable": 503,
    "prompt_error": 400,
    "cancelled": 409,
}


class HistoryItemSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["apiMessage", "userMessage"], required=False)
    content = limits.StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    type = serializers.ChoiceField(choices=["apiMessage", "userMessage"], required=False)
    message = limits.StrictCharField(required=False, allow_blank=True, trim_whitespace=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        role = attrs.get("role") or attrs.get("type")
        content = attrs.get("content", attrs.get("message"))
        if role is None or content is None:
            raise serializers.ValidationError(
                "each history item needs role and content ('apiMessage'|'userMessage')"
            )
        return {"role": role, "content": content}


class PredictionInputSerializer(serializers.Serializer):
    question = serializers.CharField(
        trim_whitespace=False,
        error_messages={
            "required": 'question is required: send {{"question": "..."}}',
            "blank": "question must not be empty",
            "invalid": "question must be a string",
        },
    )
    streaming = serializers.BooleanField(required=False, default=False)
    overrideConfig = serializers.DictField(required=False, default=dict)
    history = HistoryItemSerializer(many=True, required=False, default=list)
    chatId = limits.StrictCharField(required=False)
    uploads = serializers.ListField(required=False, default=list)

    def validate_chatId(self, value: str) -> str:
        return limits.check_chat_id(value, "chatId")

    def validate_overrideConfig(self, value: dict[str, Any]) -> dict[str, Any]:
        limits.check_override_config(value)
        return value

    def validate_question(self, value: Any) -> str:
        if not isinstance(self.initial_data.get("question"), str):
            raise serializers.ValidationError("question must be a string")
        if len(value) > settings.MAX_QUESTION_LENGTH:
            raise PayloadTooLarge(
                f"question is {len(value)} characters; the limit is "
                f"MAX_QUESTION_LENGTH={settings.MAX_QUESTION_LENGTH}",
                code="question_too_long",
            )
        return value

    def validate_history(self, value: list[dict[str, str]]) -> list[dict[str, str]]:
        if len(value) > settings.MAX_HISTORY_MESSAGES:
            raise PayloadTooLarge(
                f"history has {len(value)} messages; the limit is "
                f"MAX_HISTORY_MESSAGES={settings.MAX_HISTORY_MESSAGES}",
                code="history_too_long",
            )
        return value

    def validate_uploads(self, value: list[Any]) -> list[Any]:
        limits.check_uploads(value)
        return value


def _parse_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = request.body
    except RequestDataTooBig as exc:
        raise PayloadTooLarge(
            f"request body over MAX_REQUEST_BODY_BYTES={settings.MAX_REQUEST_BODY_BYTES}",
            code="body_too_large",
        ) from exc
    content_type = request.content_type or ""
    if content_type.startswith("multipart/form-data") or content_type.startswith(
        "application/x-www-form-urlencoded"
    ):
        try:
            data: dict[str, Any] = {k: v for k, v in request.POST.items()}
            files = [f for name in request.FILES for f in request.FILES.getlist(name)]
        except TooManyFilesSent as exc:
            raise PayloadTooLarge(
                f"too many files; the limit is MAX_UPLOADS={settings.MAX_UPLOADS}",
                code="too_many_uploads",
            ) from exc
        except TooManyFieldsSent as exc:
            raise BadRequest("too many form fields", code="invalid_request") from exc
        except MultiPartParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}", code="malformed_json") from exc
        if files:
            data["uploads"] = files
        for key in ("overrideConfig", "history", "uploads"):
            if data.get(key) == "":
                del data[key]  # an empty form field means "not sent"
        for key in ("overrideConfig", "history", "uploads"):
            if isinstance(data.get(key), str):
                try:
                    data[key] = json.loads(data[key])
                except json.JSONDecodeError as exc:
                    raise BadRequest(f"{key} is not valid JSON", code="malformed_json") from exc
        return data
    if not body:
        raise BadRequest('empty body: send JSON like {"question": "hello"}', code="malformed_json")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}", code="malformed_json") from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON body: nested too deeply", code="malformed_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object", code="malformed_json")
    return data


def _flatten_errors(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten_errors(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten_errors(v) for v in detail)
    return str(detail)


def _plain_text(value: Any) -> bool:
    """Whether DRF's CharField would take `value` as it is: a string without NUL characters or
    lone surrogates."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _simple_input(data: dict[str, Any]) -> dict[str, Any] | None:
    """Validate the common request (a question; maybe `streaming` and `chatId`; no overrides,
    history or uploads) as PredictionInputSerializer would, at a tenth of its CPU; None for
    anything else, which the serializer then validates (and words the errors of)."""
    question = data.get("question")
    if not _plain_text(question) or not question or len(question) > settings.MAX_QUESTION_LENGTH:
        return None
    streaming = data.get("streaming", False)
    if not isinstance(streaming, bool):
        return None
    for key, empty in (("overrideConfig", {}), ("history", []), ("uploads", [])):
        if key in data and data[key] != empty:
            return None
    valid: dict[str, Any] = {
        "question": question,
        "streaming": streaming,
        "overrideConfig": {},
        "history": [],
        "uploads": [],
    }
    if "chatId" in data:
        chat_id = data["chatId"]
        if not isinstance(chat_id, str) or len(chat_id) > settings.MAX_CHAT_ID_LENGTH:
            return None
        if not limits.CHAT_ID_RE.fullmatch(chat_id):
            return None
        valid["chatId"] = chat_id
    return valid


def prediction_request(data: dict[str, Any], chatflow: Chatflow) -> services.PredictionRequest:
    valid = _simple_input(data)
    if valid is None:
        serializer = PredictionInputSerializer(data=data)
        if not serializer.is_valid():
            raise BadRequest(_flatten_errors(serializer.errors), code="invalid_request")
        valid = serializer.validated_data
    override = valid["overrideConfig"]
    session_from_override = override.get("sessionId")
    if session_from_override is not None and session_from_override != "":
        limits.check_chat_id(session_from_override, "overrideConfig.sessionId")
    chat_id = valid.get("chatId") or session_from_override or str(uuid.uuid4())
    return services.PredictionRequest(
        question=valid["question"],
        chat_id=chat_id,
        session_id=session_from_override or chat_id,
        streaming=bool(valid["streaming"]) and chatflow.is_streaming,
        override_config=allowed_overrides(chatflow, override),
        history=valid["history"],
    )


def _check_origin(request: HttpRequest, chatflow: Chatflow) -> None:
    allowed = chatflow.allowed_origins()
    origin = request.META.get("HTTP_ORIGIN")  # request.headers copies every header first
    if allowed and origin and origin.rstrip("/") not in allowed:
        raise Forbidden(
            f"Origin {origin} is not allowed for this chatflow", code="origin_not_allowed"
        )


async def _achatflow_for(request: HttpRequest, chatflow_id: str) -> Chatflow:
    chatflow = await selectors.achatflow_get_recent(chatflow_id)
    if chatflow is None:
        raise chatflow_not_found(chatflow_id)
    _check_origin(request, chatflow)
    await aauthorize_chatflow(request, chatflow)
    return chatflow


async def _await_end(prediction_id: str) -> Event:
    """Wait for the prediction's `end` event and return it, or raise PredictionTimeout past the
    web deadline."""
    deadline = relay.deadline()
    heartbeat = min(settings.SSE_HEARTBEAT_SECONDS, 5.0)
    async for event in get_transport().read(
        prediction_id, after_seq=0, heartbeat=heartbeat, deadline=deadline
    ):
        if event is not None and event["event"] == TERMINAL_EVENT:
            return event
        if time.monotonic() >= deadline:
            raise PredictionTimeout(
                f"No answer within PREDICTION_TIMEOUT={settings.PREDICTION_TIMEOUT}s",
                code="prediction_timeout",
            )


# Flowise's key order; PostgreSQL's jsonb does not keep the order the result was stored in.
_RESULT_KEYS = (
    "text",
    "question",
    "chatId",
    "chatMessageId",
    "isStreamValid",
    "sessionId",
    "memoryType",
)


def _ordered(result: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: result[key] for key in _RESULT_KEYS if key in result}
    ordered.update((key, value) for key, value in result.items() if key not in ordered)
    return ordered


def _answer(prediction: Prediction) -> HttpResponse:
    if prediction.status == PredictionStatus.SUCCEEDED and prediction.result is not None:
        return JsonResponse(_ordered(prediction.result))
    code = prediction.error_code or "internal_error"
    status = _FAILURE_STATUS.get(code, 500)
    if code.startswith("provider_") and code not in _FAILURE_STATUS:
        status = 502
    if code in {"invalid_flow", "missing_input", "unknown_node_type"}:
        status = 400
    message = prediction.error_message or "The prediction failed"
    return error_response(PredictionError(message, code=code, status=status))


async def _arelease_database() -> None:
    """Close this request's database connection before a long wait.

    Under ASGI each request runs its ORM calls in a thread of its own, and that thread's
    connection stays open until the request ends: a few hundred waiting clients would otherwise
    hold as many database connections. Later queries of the request reconnect.
    """
    await sync_to_async(connections.close_all)()
    hand_back_request_thread()


def _create_released(
    chatflow: Chatflow,
    request: services.PredictionRequest,
    prediction_id: str,
    reply_to: str | None,
) -> Prediction:
    try:
        return services.prediction_create(
            chatflow=chatflow, request=request, prediction_id=prediction_id, reply_to=reply_to
        )
    finally:
        connections.close_all()  # as _arelease_database, in the same trip to the thread


_acreate_released = sync_to_async(_create_released)


async def _acancel_abandoned(prediction_id: str) -> None:
    # Runs after its request ended (see _sse): a thread of its own for its ORM calls, and its
    # database connection handed back at the end.
    async with ThreadSensitiveContext():
        try:
            prediction = await selectors.aprediction_get(prediction_id)
            if prediction is not None and prediction.can_cancel():
                await services.aprediction_cancel(prediction=prediction)
        finally:
            await asyncio.shield(sync_to_async(connections.close_all)())


async def _sse(prediction_id: str, after_seq: int, owner: bool = False) -> AsyncIterator[bytes]:
    """Relay a prediction's events as SSE frames until `end`; heartbeat while waiting.

    Events that arrived in one live message go out in one write (each still its own frame).
    """
    last = after_seq
    frames: list[bytes] = []
    try:
        async for event in relay.aread_events(
            prediction_id, after_seq=after_seq, heartbeat=settings.SSE_HEARTBEAT_SECONDS
        ):
            if event is None:
                yield b"".join([*frames, SSE_HEARTBEAT])
                frames.clear()
                continue
            last = event["seq"]
            frames.append(sse_frame(event))
            if not event.get("more"):
                yield b"".join(frames)
                frames.clear()
        if frames:
            yield b"".join(frames)
    except asyncio.CancelledError:
        logger.warning("prediction %s: client left the stream at seq %s", prediction_id, last)
        if owner and settings.PREDICTION_STOP_ON_DISCONNECT:
            # The client that asked is gone: stop the run (PREDICTION_STOP_ON_DISCONNECT).
            # A context of its own: the request's ends before this task does.
            asyncio.get_running_loop().create_task(
                _acancel_abandoned(prediction_id), context=contextvars.Context()
            )
        raise


def _sse_response(prediction_id: str, after_seq: int, owner: bool = False) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _sse(prediction_id, after_seq, owner), content_type="text/event-stream"
    )
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


def api_errors(view):
    """Turn PredictionError, and a database or Redis that is away (503), into Flowise's error
    JSON for the async views."""

    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except PredictionError as exc:
            return error_response(exc)
        except Exception as exc:
            outage = outage_error(exc)
            if outage is None:
                raise
            return error_response(outage)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return csrf_exempt(wrapper)


def _method_not_allowed(allowed: str) -> HttpResponse:
    response = error_response(
        PredictionError(f"Use {allowed}", code="method_not_allowed", status=405)
    )
    response["Allow"] = allowed
    return response


@api_errors
async def prediction_create(request: HttpRequest, chatflow_id: str) -> HttpResponse:
    """POST /api/v1/prediction/<chatflow_id>: answer as JSON, or stream SSE."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    chatflow = await _achatflow_for(request, chatflow_id)
    await ratelimit.acheck(chatflow, ratelimit.request_ip(request))
    data = _parse_body(request)
    prediction_input = prediction_request(data, chatflow)
    async with relay.reserved() as (prediction_id, reply_to):
        try:
            prediction = await _acreate_released(
                chatflow, prediction_input, prediction_id, reply_to
            )
        except IntegrityError:
            # Deleted by another process since this one read it (achatflow_get_recent).
            selectors.chatflow_forget(chatflow.id)
            raise chatflow_not_found(chatflow_id) from None
    hand_back_request_thread()  # its connection is closed; no thread while it waits
    await relay.astart(prediction)
    if prediction.streaming:
        response: HttpResponse = _sse_response(prediction_id, 0, owner=True)
    else:
        try:
            end = await _await_end(prediction_id)
        except PredictionTimeout as exc:
            stored = await relay.agive_up(prediction_id)
            response = error_response(exc) if stored is None else _answer(stored)
        else:
            if "result" in end:  # a success, as stored (see Event)
                response = JsonResponse(_ordered(end["result"]))
            else:
                # Accepted and answered: ride out a database restart rather than answer 503.
                stored = await services.aretry_database(Prediction.objects.get, id=prediction.id)
                response = _answer(stored)
    # Lets a client resume (GET /predictions/<id>/events) or stop it by id.
    response["X-Prediction-Id"] = prediction_id
    return response


async def _aprediction_for(request: HttpRequest, prediction_id: str) -> Prediction:
    prediction = await selectors.aprediction_get(prediction_id)
    if prediction is None:
        raise NotFound(f"Prediction {prediction_id} not found", code="prediction_not_found")
    _check_origin(request, prediction.chatflow)
    await aauthorize_chatflow(request, prediction.chatflow)
    return prediction


# Event sequence numbers stay far below this (and below Redis stream ids' 64-bit limit).
MAX_SEQ = 2**53 - 1


def _after_seq(request: HttpRequest) -> int:
    """Return where to resume: Last-Event-ID, else ?after_seq=, else 0 (each checked if sent)."""
    values = []
    for name, raw in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after_seq", request.GET.get("after_seq")),
    ):
        if raw is None:
            continue
        try:
            value = int(raw)
        except ValueError as exc:
            raise BadRequest(f"{name} must be a whole number", code="invalid_request") from exc
        if not 0 <= value <= MAX_SEQ:
            raise BadRequest(f"{name} must be from 0 to {MAX_SEQ}", code="invalid_request")
        values.append(value)
    return values[0] if values else 0


@api_errors
async def prediction_events(request: HttpRequest, prediction_id: str) -> HttpResponse:
    """GET /api/v1/predictions/<id>/events: attach to a prediction's events (SSE, resumable)."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    prediction = await _aprediction_for(request, prediction_id)
    after_seq = _after_seq(request)
    if settings.MODE == "queue":
        # Redis away: answer 503 queue_unavailable now rather than break the stream later.
        await clients.get_async_redis().ping()
    await _arelease_database()
    return _sse_response(str(prediction.id), after_seq)


def prediction_to_json(prediction: Prediction) -> dict[str, Any]:
    return {
        "id": str(prediction.id),
        "chatflowid": str(prediction.chatflow_id),
        "chatId": prediction.chat_id,
        "sessionId": prediction.session_id,
        "status": prediction.status,
        "streaming": prediction.streaming,
        "result": prediction.result,
        "error": {"code": prediction.error_code, "message": prediction.error_message}
        if prediction.error_code
        else None,
        "attempts": prediction.attempts,
        "enqueuedAt": prediction.enqueued_at.isoformat(),
        "startedAt": prediction.started_at.isoformat() if prediction.started_at else None,
        "finishedAt": prediction.finished_at.isoformat() if prediction.finished_at else None,
    }


@api_errors
async def prediction_detail(request: HttpRequest, prediction_id: str) -> HttpResponse:
    """GET /api/v1/predictions/<id>: status and result."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    prediction = await _aprediction_for(request, prediction_id)
    return JsonResponse(prediction_to_json(prediction))


@api_errors
async def prediction_cancel(request: HttpRequest, prediction_id: str) -> HttpResponse:
    """POST /api/v1/predictions/<id>/cancel: stop it wherever it is (a no-op once finished)."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    prediction = await _aprediction_for(request, prediction_id)
    was = prediction.status
    status = await services.aprediction_cancel(prediction=prediction)
    message = (
        "Prediction cancelled" if was in ("queued", "running") else f"Prediction already {was}"
    )
    return JsonResponse({"status": 200, "message": message, "predictionStatus": status})


@api_errors
async def chatmessage_abort(request: HttpRequest, chatflow_id: str, chat_id: str) -> HttpResponse:
    """PUT /api/v1/chatmessage/abort/<chatflow_id>/<chat_id>: stop what runs for that chat."""
    if request.method != "PUT":
        return _method_not_allowed("PUT")
    chatflow = await _achatflow_for(request, chatflow_id)
    predictions = await selectors.aprediction_list_active_for_chat(
        chatflow=chatflow, chat_id=chat_id
    )
    for prediction in predictions:
        await services.aprediction_cancel(prediction=prediction)
    return JsonResponse(
        {"status": 200, "message": "Chat message aborted", "aborted": len(predictions)}
    )
