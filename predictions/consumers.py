"""WebSocket consumer: authorise, start or resume a prediction, relay its events.

The protocol is documented in README.md ("Chat UI and WebSocket protocol").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from predictions import ratelimit, relay, selectors, services, webchat
from predictions.api.predict import prediction_request
from predictions.exceptions import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    PredictionError,
    chatflow_not_found,
)
from predictions.models import Chatflow, Prediction, PredictionStatus

logger = logging.getLogger(__name__)

CLOSE_LOGIN_REQUIRED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

# Room around a question of MAX_QUESTION_LENGTH characters for JSON escapes and other fields.
FRAME_OVERHEAD_CHARS = 4096

MESSAGE_TYPES = ("question", "stop", "resume", "ping")


def max_frame_chars() -> int:
    """Return the longest text frame accepted from a client."""
    return 2 * settings.MAX_QUESTION_LENGTH + FRAME_OVERHEAD_CHARS


def error_frame(exc: PredictionError) -> dict[str, Any]:
    """Return the error frame for a refused message, with what to do when we know it."""
    frame = {"type": "error", "code": exc.code, "message": exc.message}
    if exc.code in webchat.ERROR_HINTS:
        frame["hint"] = webchat.ERROR_HINTS[exc.code]
    return frame


class PredictionStreamConsumer(AsyncJsonWebsocketConsumer):
    """Chat with one chatflow: ask, stop, and resume an answer's events after a reconnect."""

    # The event transport joins each prediction's group itself; this consumer needs no channel.
    channel_layer_alias = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chatflow_id = ""
        self.prediction_id: str | None = None
        self.relay_task: asyncio.Task[None] | None = None
        self.closing = False

    async def connect(self) -> None:
        self.chatflow_id = self.scope["url_route"]["kwargs"]["chatflow_id"]
        # Accept before refusing: a close before the handshake reaches the browser as 1006,
        # without our application close code.
        await self.accept()
        await self._achatflow()

    async def disconnect(self, code: int) -> None:
        await self._stop_relay()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if self.closing:
            return
        if text_data is None:
            await self._send_error(BadRequest("Send JSON text frames", code="invalid_message"))
            return
        if len(text_data) > max_frame_chars():
            await self._send_error(
                PayloadTooLarge(
                    f"The message is {len(text_data)} characters; the limit is "
                    f"{max_frame_chars()} (2 x MAX_QUESTION_LENGTH + {FRAME_OVERHEAD_CHARS})",
                    code="message_too_large",
                )
            )
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self._send_error(
                BadRequest("The message is not valid JSON", code="malformed_json")
            )
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind not in MESSAGE_TYPES:
                raise BadRequest(
                    'Messages are JSON objects with "type": one of ' + ", ".join(MESSAGE_TYPES),
                    code="invalid_message",
                )
            await getattr(self, f"_on_{kind}")(content)
        except PredictionError as exc:
            await self._send_error(exc)
        except Exception:
            logger.exception(
                "chat %s: %s message failed (prediction %s)",
                self.chatflow_id,
                kind,
                self.prediction_id,
            )
            await self._send_error(
                PredictionError("Internal error; try again", code="internal_error", status=500)
            )

    # --- client messages ---------------------------------------------------------------------

    async def _on_question(self, content: dict[str, Any]) -> None:
        chatflow = await self._achatflow()
        if chatflow is None:
            return
        # The chatflow's rate limit counts questions here as on POST /prediction, per address.
        await ratelimit.acheck(chatflow, ratelimit.scope_ip(self.scope))
        raw_chat_id = content.get("chatId")
        chat_id = str(uuid.uuid4()) if raw_chat_id is None else webchat.parse_chat_id(raw_chat_id)
        data: dict[str, Any] = {"chatId": chat_id, "streaming": True}
        if "question" in content:
            data["question"] = content["question"]
        request = prediction_request(data, chatflow)
        async with relay.reserved() as (prediction_id, reply_to):
            prediction = await services.aprediction_create(
                chatflow=chatflow, request=request, prediction_id=prediction_id, reply_to=reply_to
            )
        await relay.astart(prediction)
        logger.info("chat %s: prediction %s created", chatflow.id, prediction.id)
        await self._follow(prediction, after_seq=0)

    async def _on_stop(self, content: dict[str, Any]) -> None:
        prediction_id = content.get("predictionId") or self.prediction_id
        if prediction_id is None:
            raise BadRequest(
                "Nothing to stop: no prediction on this connection", code="no_prediction"
            )
        prediction = await self._aprediction(prediction_id)
        if prediction is None:
            return
        status = await services.aprediction_cancel(prediction=prediction)
        logger.info("prediction %s: stop requested over WebSocket (%s)", prediction.id, status)

    async def _on_resume(self, content: dict[str, Any]) -> None:
        after_seq = content.get("afterSeq", 0)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise BadRequest("afterSeq must be a whole number >= 0", code="invalid_request")
        prediction = await self._aprediction(content.get("predictionId"))
        if prediction is None:
            return
        logger.info("prediction %s: resumed over WebSocket after seq %s", prediction.id, after_seq)
        await self._follow(prediction, after_seq=after_seq)

    async def _on_ping(self, content: dict[str, Any]) -> None:
        await self.send_json({"type": "pong"})

    # --- helpers -----------------------------------------------------------------------------

    async def _achatflow(self) -> Chatflow | None:
        """Return the chatflow if this connection may use it (now); else refuse and close."""
        chatflow = await selectors.achatflow_get(self.chatflow_id)
        if chatflow is None:
            await self._refuse(chatflow_not_found(self.chatflow_id), CLOSE_NOT_FOUND)
            return None
        denial = webchat.chat_denial(user=self.scope.get("user"), chatflow=chatflow)
        if denial is not None:
            code = CLOSE_LOGIN_REQUIRED if denial.status == 401 else CLOSE_FORBIDDEN
            await self._refuse(denial, code)
            return None
        return chatflow

    async def _aprediction(self, prediction_id: Any) -> Prediction | None:
        chatflow = await self._achatflow()
        if chatflow is None:
            return None
        prediction = await selectors.aprediction_get(prediction_id)
        if prediction is None or prediction.chatflow_id != chatflow.id:
            raise NotFound(
                f"Prediction {prediction_id} not found for this chatflow",
                code="prediction_not_found",
            )
        return prediction

    async def _refuse(self, exc: PredictionError, close_code: int) -> None:
        logger.info("chat %s: connection refused (%s)", self.chatflow_id, exc.code)
        self.closing = True
        await self._stop_relay()
        await self._send_error(exc)
        await self.close(code=close_code)

    async def _send_error(self, exc: PredictionError) -> None:
        await self.send_json(error_frame(exc))

    async def _follow(self, prediction: Prediction, *, after_seq: int) -> None:
        """Make `prediction` this connection's one relayed prediction (the previous one runs on)."""
        await self._stop_relay()
        prediction_id = str(prediction.id)
        self.prediction_id = prediction_id
        await self.send_json(
            {
                "type": "prediction",
                "predictionId": prediction_id,
                "chatId": prediction.chat_id,
                "question": prediction.question,
                "streaming": prediction.streaming,
                "status": prediction.status,
            }
        )
        self.relay_task = asyncio.create_task(
            self._relay(prediction_id, after_seq), name=f"ws-relay-{prediction_id}"
        )

    async def _stop_relay(self) -> None:
        task, self.relay_task = self.relay_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _relay(self, prediction_id: str, after_seq: int) -> None:
        last = after_seq
        try:
            async for event in relay.aread_events(
                prediction_id, after_seq=after_seq, heartbeat=settings.SSE_HEARTBEAT_SECONDS
            ):
                if event is None:
                    continue
                last = event["seq"]
                await self.send_json(
                    {
                        "type": "event",
                        "predictionId": prediction_id,
                        "seq": event["seq"],
                        "event": event["event"],
                        "data": event["data"],
                    }
                )
            await self.send_json(await self._outcome(prediction_id))
        except Exception:
            logger.exception(
                "prediction %s: WebSocket relay broke off at seq %s", prediction_id, last
            )
            await self.send_json(
                {
                    "type": "error",
                    "code": "stream_interrupted",
                    "message": "The answer's event stream broke off; resume to continue",
                    "predictionId": prediction_id,
                    "afterSeq": last,
                }
            )

    async def _outcome(self, prediction_id: str) -> dict[str, Any]:
        """Return the `done` frame: the prediction's final status, answer text or error."""
        prediction = await selectors.aprediction_get(prediction_id)
        frame: dict[str, Any] = {"type": "done", "predictionId": prediction_id}
        if prediction is None:
            return {**frame, "status": "unknown"}
        frame["status"] = prediction.status
        if prediction.status == PredictionStatus.SUCCEEDED and prediction.result is not None:
            frame["text"] = prediction.result.get("text", "")
        elif prediction.status == PredictionStatus.FAILED:
            code = prediction.error_code or "internal_error"
            frame["error"] = {
                "code": code,
                "message": prediction.error_message or "The prediction failed",
                "hint": webchat.hint_for(code),
            }
        elif not prediction.is_terminal():
            frame["error"] = {
                "code": "events_unavailable",
                "message": relay.EVENTS_UNAVAILABLE,
                "hint": webchat.hint_for("events_unavailable"),
            }
        return frame
