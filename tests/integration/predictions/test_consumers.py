"""The chat WebSocket in queue mode: enqueue, our worker (thread) runs it, events via Redis."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from predictions import services
from predictions.models import ChatMessage, Prediction, PredictionStatus
from tests.conftest import _reset_runtime, offline_flow
from tests.websocket import TIMEOUT, chat_socket, events_of, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

CHAT_ID = "0b5e7a52-0000-4000-8000-0000000000ab"


async def public_flow(**flow: Any):
    return await sync_to_async(services.chatflow_create)(
        name="ws", is_public=True, flow_data=offline_flow(**flow)
    )


async def test_queue_consumer_question_is_run_by_the_worker_and_streamed(worker):
    chatflow = await public_flow(tokens=6, delay_ms=5)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    events = events_of(frames)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"] for e in events] == ["start"] + ["token"] * 6 + ["metadata", "end"]
    assert frames[-1]["status"] == "succeeded"
    assert frames[-1]["text"] == "".join(f"tok{i} " for i in range(6))
    prediction = await Prediction.objects.aget()
    assert prediction.worker_name == worker.name
    assert await ChatMessage.objects.filter(chat_id=CHAT_ID).acount() == 2


async def test_queue_consumer_stop_cancels_the_job_on_the_worker(worker):
    chatflow = await public_flow(tokens=300, delay_ms=20)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        await receive_until(ws, "event", event="token")
        await ws.send_json_to({"type": "stop"})
        frames = await receive_until(ws)

    names = [e["event"] for e in events_of(frames)]
    assert names[-2:] == ["abort", "end"]
    assert frames[-1]["status"] == "cancelled"
    assert (await Prediction.objects.aget()).status == PredictionStatus.CANCELLED


async def test_queue_consumer_resume_after_a_web_restart_gets_exactly_the_missed_events(worker):
    chatflow = await public_flow(tokens=40, delay_ms=10)

    async with chat_socket(chatflow.id) as first:
        await first.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        prediction_id = (await first.receive_json_from(timeout=TIMEOUT))["predictionId"]
        seen = events_of(await receive_until(first, "event", event="token"))
        seen += events_of([await first.receive_json_from(timeout=TIMEOUT) for _ in range(3)])
    # A new web process: fresh channel layer, transport and Redis clients; only Redis remembers.
    _reset_runtime()

    async with chat_socket(chatflow.id) as second:
        await second.send_json_to(
            {"type": "resume", "predictionId": prediction_id, "afterSeq": seen[-1]["seq"]}
        )
        frames = await receive_until(second)

    every = seen + events_of(frames)
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    text = "".join(e["data"] for e in every if e["event"] == "token")
    assert text == "".join(f"tok{i} " for i in range(40))
    assert frames[-1] == {
        "type": "done",
        "predictionId": prediction_id,
        "status": "succeeded",
        "text": text,
    }


async def test_queue_consumer_resume_of_a_finished_prediction_replays_the_redis_stream(worker):
    chatflow = await public_flow(tokens=5)
    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        original = await receive_until(ws)
    _reset_runtime()

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to(
            {"type": "resume", "predictionId": original[0]["predictionId"], "afterSeq": 3}
        )
        frames = await receive_until(ws)

    assert events_of(frames) == [e for e in events_of(original) if e["seq"] > 3]
