"""A retried job's stream, lost-worker handling, and MAX_QUEUE_LENGTH back-pressure."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient

from predictions import services
from predictions.events import Publisher, get_transport
from predictions.models import ChatMessage, Prediction
from tests.conftest import offline_flow
from tests.integration.predictions.test_queue_mode import parse_sse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def _create(chatflow, question: str = "hi") -> Prediction:
    request = services.PredictionRequest(
        question=question,
        chat_id="c",
        session_id="c",
        streaming=True,
        override_config={},
        history=[],
    )
    return await services.aprediction_create(chatflow=chatflow, request=request)


async def test_retried_prediction_replays_only_the_new_attempt(rq_queue, settings):
    chatflow = await sync_to_async(services.chatflow_create)(
        name="r", flow_data=offline_flow(tokens=3, memory=False)
    )
    prediction = await _create(chatflow)
    pid = str(prediction.id)
    # Attempt 1 ran on a worker that died mid-answer: two tokens are in the stream.
    await Prediction.objects.filter(id=pid).aupdate(status="running", attempts=1)
    first = Publisher(get_transport(), pid)
    for name, data in (("start", ""), ("token", "tok0 "), ("token", "tok1 ")):
        await first.emit(name, data)

    from predictions.worker import ConcurrentWorker

    worker = ConcurrentWorker([rq_queue], connection=rq_queue.connection, health_port=0)
    await sync_to_async(worker.work, thread_sensitive=False)(burst=True)

    late = parse_sse(
        await read_stream(await AsyncClient().get(f"/api/v1/predictions/{pid}/events"))
    )
    assert [f["event"] for f in late] == [
        "retry",
        "start",
        "token",
        "token",
        "token",
        "metadata",
        "end",
    ]
    assert late[0]["data"] == {"attempt": 2}
    assert [f["seq"] for f in late] == list(range(4, 11))
    assert "".join(f["data"] for f in late if f["event"] == "token") == "tok0 tok1 tok2 "
    prediction = await Prediction.objects.aget(id=pid)
    assert prediction.status == "succeeded"
    assert prediction.attempts == 2
    assert await ChatMessage.objects.acount() == 2


async def test_lost_worker_job_fails_with_worker_lost_and_ends_the_stream(rq_queue):
    chatflow = await sync_to_async(services.chatflow_create)(
        name="l", flow_data=offline_flow(tokens=3, memory=False)
    )
    prediction = await _create(chatflow)
    pid = str(prediction.id)
    await Prediction.objects.filter(id=pid).aupdate(status="running", attempts=1)
    await Publisher(get_transport(), pid).emit("start", "")
    # The job's record is gone or failed: what rq's abandoned-job sweep leaves behind.
    await sync_to_async(rq_queue.remove)(pid)
    await sync_to_async(rq_queue.connection.delete)(f"rq:job:{pid}")

    await sync_to_async(services.predictions_mark_lost, thread_sensitive=False)([pid])

    prediction = await Prediction.objects.aget(id=pid)
    assert (prediction.status, prediction.error_code) == ("failed", "worker_lost")
    frames = parse_sse(
        await read_stream(await AsyncClient().get(f"/api/v1/predictions/{pid}/events"))
    )
    assert [f["event"] for f in frames] == ["start", "error", "end"]


def test_lost_handler_leaves_a_job_with_retries_left_alone(rq_queue, db):
    chatflow = services.chatflow_create(name="k", flow_data=offline_flow(memory=False))
    prediction = async_to_sync(_create)(chatflow)
    # Still queued in rq (a retry put it back): not lost.
    services.predictions_mark_lost([str(prediction.id)])
    assert Prediction.objects.get(id=prediction.id).status == "queued"


async def test_full_queue_answers_503_with_retry_after(rq_queue, settings):
    settings.MAX_QUEUE_LENGTH = 2
    chatflow = await sync_to_async(services.chatflow_create)(
        name="f", flow_data=offline_flow(memory=False)
    )
    await _create(chatflow)
    await _create(chatflow)
    response = await AsyncClient().post(
        f"/api/v1/prediction/{chatflow.id}",
        json.dumps({"question": "one too many"}),
        content_type="application/json",
    )
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "queue_full"
    assert "MAX_QUEUE_LENGTH=2" in body["message"]
    assert response["Retry-After"] == "10"
    assert await Prediction.objects.acount() == 2
