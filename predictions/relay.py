"""Start a prediction where this mode runs it, and read its events for a client (SSE or WS)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from predictions import local, selectors, services
from predictions.events import get_transport
from predictions.models import Prediction, PredictionStatus
from predictions.streaming import DONE, TERMINAL_EVENT, Event

EVENTS_UNAVAILABLE = "The prediction's events are not available here"
TIMED_OUT = "prediction_timeout: no answer within the time limit"


def deadline() -> float:
    """Return the monotonic time after which a web-side reader stops waiting."""
    return time.monotonic() + settings.PREDICTION_TIMEOUT + settings.PREDICTION_TIMEOUT_MARGIN


@contextlib.asynccontextmanager
async def reserved() -> AsyncIterator[tuple[str, str | None]]:
    """A new prediction's id, and the channel its run should answer on: this loop's inbox in
    queue mode, where the prediction's first reader here then takes its events from a mailbox
    opened now (see events.RedisTransport.reserve). The mailbox is dropped again if the block
    raises (the prediction was not created)."""
    prediction_id = str(uuid.uuid4())
    transport = get_transport()
    reply_to = await transport.reserve(prediction_id)
    try:
        yield prediction_id, reply_to
    except BaseException:
        transport.release(prediction_id)
        raise


async def astart(prediction: Prediction) -> None:
    """Start a created prediction: main mode runs it here; queue mode has enqueued it already."""
    if settings.MODE == "main":
        local.start(str(prediction.id))


async def agive_up(prediction_id: str) -> Prediction | None:
    """After the web deadline: stop the prediction so it neither runs on nor hangs.

    Fails it with prediction_timeout unless it has ended already (its `end` got lost, e.g. in
    a Redis outage); returns the prediction as stored now.
    """
    prediction = await selectors.aprediction_get(prediction_id)
    if prediction is not None and prediction.can_cancel():
        await services.aprediction_fail(
            prediction_id=prediction_id,
            code="prediction_timeout",
            message=f"No answer within PREDICTION_TIMEOUT={settings.PREDICTION_TIMEOUT}s",
        )
        prediction = await selectors.aprediction_get(prediction_id)
    return prediction


def _ending(prediction: Prediction | None, last: int) -> list[Event]:
    """The closing events for a reader at `last` that the stream will not bring: as stored."""
    if prediction is None:
        closing: tuple[str, Any] = ("error", EVENTS_UNAVAILABLE)
    elif prediction.status == PredictionStatus.SUCCEEDED and prediction.result:
        meta = {
            k: prediction.result[k]
            for k in ("chatId", "chatMessageId", "question", "sessionId", "memoryType")
            if k in prediction.result
        }
        closing = ("metadata", meta)
    elif prediction.status == PredictionStatus.CANCELLED:
        closing = ("abort", DONE)
    elif prediction.error_code == "prediction_timeout":
        closing = ("error", TIMED_OUT)
    else:
        closing = ("error", prediction.error_message or "The prediction failed")
    return [
        Event(seq=last + 1, event=closing[0], data=closing[1]),
        Event(seq=last + 2, event="end", data=DONE),
    ]


async def asynthesized(prediction: Prediction, after_seq: int) -> AsyncIterator[Event]:
    """Events rebuilt from the database when the stream is gone (expired, or another process)."""
    events: list[tuple[str, Any]] = [("start", "")]
    if prediction.status == PredictionStatus.SUCCEEDED and prediction.result:
        events.append(("token", prediction.result.get("text", "")))
        meta = {
            k: prediction.result[k]
            for k in ("chatId", "chatMessageId", "question", "sessionId", "memoryType")
            if k in prediction.result
        }
        events.append(("metadata", meta))
    elif prediction.status == PredictionStatus.CANCELLED:
        events.append(("abort", DONE))
    else:
        events.append(("error", prediction.error_message or "The prediction failed"))
    events.append(("end", DONE))
    for seq, (name, data) in enumerate(events, start=1):
        if seq > after_seq:
            yield Event(seq=seq, event=name, data=data)


async def aread_events(
    prediction_id: str, *, after_seq: int, heartbeat: float
) -> AsyncIterator[Event | None]:
    """Yield the prediction's events with seq > after_seq until `end`; None every quiet heartbeat.

    Past the web deadline the prediction is failed and `error` + `end` are yielded (or, if it
    ended meanwhile without its `end` reaching the stream, its stored ending). When the
    transport has no record of the prediction, a finished one is answered from the database
    (`asynthesized`) and an unfinished one with `error` + `end`.
    """
    give_up_at = deadline()
    last = after_seq
    async for event in get_transport().read(
        prediction_id, after_seq=after_seq, heartbeat=heartbeat, deadline=give_up_at
    ):
        if event is None:
            if time.monotonic() >= give_up_at:
                for closing in _ending(await agive_up(prediction_id), last):
                    yield closing
                return
            yield None
            continue
        last = event["seq"]
        yield event
        if event["event"] == TERMINAL_EVENT:
            return
    prediction = await selectors.aprediction_get(prediction_id)
    if prediction is not None and prediction.is_terminal():
        async for event in asynthesized(prediction, last):
            yield event
    else:
        yield Event(seq=last + 1, event="error", data=EVENTS_UNAVAILABLE)
        yield Event(seq=last + 2, event="end", data=DONE)
