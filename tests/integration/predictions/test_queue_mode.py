"""Queue mode end to end in one process: API view → RQ → our worker (thread) → DB + events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from rq.job import Job

from predictions import events, services
from predictions.models import ChatMessage, Prediction
from tests.conftest import offline_flow

pytestmark = pytest.mark.django_db(transaction=True)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    frames = []
    for block in raw.decode().split("\n\n"):
        lines = block.split("\n")
        data = [line[5:] for line in lines if line.startswith("data:")]
        ids = [line[3:] for line in lines if line.startswith("id:")]
        if data:
            frames.append({"seq": int(ids[0]), **json.loads(data[0])})
    return frames


async def read_stream(response, limit: float = 20) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return await asyncio.wait_for(collect(), limit)


async def make_flow(**kwargs: Any):
    return await sync_to_async(services.chatflow_create)(name="q", flow_data=offline_flow(**kwargs))


async def predict(chatflow, **body: Any):
    client = AsyncClient()
    return await client.post(
        f"/api/v1/prediction/{chatflow.id}", json.dumps(body), content_type="application/json"
    )


async def wait_for_status(prediction_id: str, *statuses: str, limit: float = 10) -> Prediction:
    deadline = time.monotonic() + limit
    while True:
        prediction = await Prediction.objects.aget(id=prediction_id)
        if prediction.status in statuses:
            return prediction
        assert time.monotonic() < deadline, f"prediction stayed {prediction.status}"
        await asyncio.sleep(0.02)


async def test_queue_prediction_answers_like_main_mode(worker, settings):
    chatflow = await make_flow(tokens=5)
    response = await predict(chatflow, question="hi", chatId="c1")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "text",
        "question",
        "chatId",
        "chatMessageId",
        "isStreamValid",
        "sessionId",
        "memoryType",
    ]
    assert body["text"] == "tok0 tok1 tok2 tok3 tok4 "
    prediction = await Prediction.objects.aget(chat_id="c1")
    assert prediction.status == "succeeded"
    assert prediction.worker_name == worker.name
    roles = [m.role async for m in ChatMessage.objects.filter(chat_id="c1").order_by("created_at")]
    assert roles == ["userMessage", "apiMessage"]


async def test_queue_job_carries_only_the_prediction_id_and_the_askers_inbox(
    rq_queue, settings, monkeypatch
):
    sent = []  # the commands of each transaction the web side sends
    execute = redis.client.Pipeline.execute

    def recording(pipe, *args, **kwargs):
        sent.append([str(command[0]).upper() for command, _ in pipe.command_stack])
        return execute(pipe, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", recording)
    chatflow = await make_flow()
    client = AsyncClient()
    settings.PREDICTION_TIMEOUT = 1
    settings.PREDICTION_TIMEOUT_MARGIN = 1
    await client.post(
        f"/api/v1/prediction/{chatflow.id}",
        json.dumps({"question": "secret q"}),
        content_type="application/json",
    )
    prediction = await Prediction.objects.afirst()
    job = Job.fetch(str(prediction.id), connection=rq_queue.connection)
    assert job.args == (str(prediction.id),)
    assert job.kwargs == {"reply_to": events._inboxes[asyncio.get_running_loop()].channel}
    assert "secret q" not in json.dumps(job.to_dict(), default=str)
    # Enqueued for good, in one transaction with the queue's registration (not two).
    assert len(sent) == 1, sent
    assert {"SADD", "HSET", "RPUSH"} <= set(sent[0])
    assert rq_queue.job_ids == [str(prediction.id)]
    assert rq_queue.connection.sismember("rq:queues", rq_queue.key)
    assert job.get_status() == "queued"
    assert job.timeout == settings.PREDICTION_TIMEOUT + 60


async def test_queue_streaming_frames_in_order(worker):
    chatflow = await make_flow(tokens=20)
    response = await predict(chatflow, question="hi", streaming=True)
    frames = parse_sse(await read_stream(response))
    assert [f["event"] for f in frames] == ["start"] + ["token"] * 20 + ["metadata", "end"]
    assert [f["seq"] for f in frames] == list(range(1, 24))
    assert "".join(f["data"] for f in frames if f["event"] == "token") == "".join(
        f"tok{i} " for i in range(20)
    )


async def test_queue_late_reader_gets_the_full_stream(worker):
    chatflow = await make_flow(tokens=8)
    response = await predict(chatflow, question="hi", streaming=True)
    first = parse_sse(await read_stream(response))
    prediction = await Prediction.objects.afirst()
    late = await AsyncClient().get(f"/api/v1/predictions/{prediction.id}/events")
    assert parse_sse(await read_stream(late)) == first
    resumed = await AsyncClient().get(
        f"/api/v1/predictions/{prediction.id}/events", headers={"Last-Event-ID": "4"}
    )
    assert parse_sse(await read_stream(resumed)) == first[4:]


async def test_queue_reader_attached_mid_run_misses_nothing(worker):
    chatflow = await make_flow(tokens=30, delay_ms=20)
    stream = asyncio.ensure_future(predict(chatflow, question="hi", streaming=True))
    prediction = await _first_prediction()
    await wait_for_status(str(prediction.id), "running")
    attached = await AsyncClient().get(
        f"/api/v1/predictions/{prediction.id}/events", headers={"Last-Event-ID": "0"}
    )
    late_frames = parse_sse(await read_stream(attached))
    first_frames = parse_sse(await read_stream(await stream))
    assert late_frames == first_frames
    assert late_frames[-1]["event"] == "end"


async def _first_prediction() -> Prediction:
    deadline = time.monotonic() + 10
    while True:
        prediction = await Prediction.objects.afirst()
        if prediction is not None:
            return prediction
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_queue_cancel_of_queued_prediction_never_runs(rq_queue, settings):
    chatflow = await make_flow(tokens=3)
    stream = asyncio.ensure_future(predict(chatflow, question="hi", streaming=True, chatId="c9"))
    prediction = await _first_prediction()
    response = await AsyncClient().put(f"/api/v1/chatmessage/abort/{chatflow.id}/c9")
    assert response.json()["message"] == "Chat message aborted"
    frames = parse_sse(await read_stream(await stream))
    assert [f["event"] for f in frames] == ["abort", "end"]
    # A worker that claims it afterwards sees the marker and the status: it never runs.
    from predictions.worker import ConcurrentWorker

    w = ConcurrentWorker([rq_queue], connection=rq_queue.connection, health_port=0)
    await asyncio.to_thread(w.work, burst=True)
    prediction = await Prediction.objects.aget(id=prediction.id)
    assert prediction.status == "cancelled"
    assert prediction.attempts == 0
    assert await ChatMessage.objects.acount() == 0


async def test_queue_cancel_of_running_prediction_stops_it(worker):
    chatflow = await make_flow(tokens=500, delay_ms=20)
    stream = asyncio.ensure_future(predict(chatflow, question="hi", streaming=True))
    prediction = await _first_prediction()
    await wait_for_status(str(prediction.id), "running")
    started = time.monotonic()
    response = await AsyncClient().post(f"/api/v1/predictions/{prediction.id}/cancel")
    assert response.status_code == 200
    frames = parse_sse(await read_stream(await stream))
    assert [f["event"] for f in frames][-2:] == ["abort", "end"]
    assert time.monotonic() - started < 5
    prediction = await wait_for_status(str(prediction.id), "cancelled")
    assert prediction.error_code == "cancelled"
    assert await ChatMessage.objects.acount() == 0


async def test_queue_web_gives_up_with_504_when_no_worker(rq_queue, settings):
    settings.PREDICTION_TIMEOUT = 1
    settings.PREDICTION_TIMEOUT_MARGIN = 1
    chatflow = await make_flow()
    response = await predict(chatflow, question="hi")
    assert response.status_code == 504
    assert response.json()["code"] == "prediction_timeout"
    prediction = await Prediction.objects.afirst()
    assert prediction.status == "failed"
    assert prediction.error_code == "prediction_timeout"


async def test_queue_prediction_timeout_inside_the_node(worker, settings):
    settings.PREDICTION_TIMEOUT = 1
    chatflow = await make_flow(tokens=100, delay_ms=100)
    started = time.monotonic()
    response = await predict(chatflow, question="hi")
    assert response.status_code == 504
    assert response.json()["code"] == "prediction_timeout"
    assert time.monotonic() - started < 5
    assert await ChatMessage.objects.acount() == 0


async def test_queue_unavailable_redis_answers_503(queue_mode, settings):
    from flowsite.redisconf import RedisConfig
    from tests.conftest import _reset_runtime

    settings.REDIS = RedisConfig(host="127.0.0.1", port=1, connect_timeout=0.5)
    settings.RQ_QUEUES = {
        settings.QUEUE_NAME: settings.REDIS.rq_queue(default_timeout=60, result_ttl=60)
    }
    _reset_runtime()
    chatflow = await make_flow()
    response = await predict(chatflow, question="hi")
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
    assert response["Retry-After"]
    prediction = await Prediction.objects.afirst()
    assert prediction.status == "failed"


async def test_queue_resume_after_the_end_closes_at_once(worker):
    chatflow = await make_flow(tokens=2)
    frames = parse_sse(await read_stream(await predict(chatflow, question="hi", streaming=True)))
    prediction = await Prediction.objects.afirst()
    started = time.monotonic()
    resumed = await AsyncClient().get(
        f"/api/v1/predictions/{prediction.id}/events",
        headers={"Last-Event-ID": str(frames[-1]["seq"])},
    )
    assert await read_stream(resumed, limit=5) == b""
    assert time.monotonic() - started < 5
