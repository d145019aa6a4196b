"""Stopping predictions (main mode): abort by chat, cancel by id, and clients that leave."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.test import AsyncClient

from predictions import local, services
from predictions.models import ChatMessage, Prediction, PredictionStatus
from tests.conftest import offline_flow
from tests.unit.helpers import (
    acreate_apikey,
    acreate_chatflow,
    error_of,
    events,
    parse_frames,
    post_json,
    prediction_url,
    read_stream,
    request_context,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"tokens": 200, "delay_ms": 20}  # 4 s if nobody stops it


def abort_url(chatflow_id: object, chat_id: str) -> str:
    return f"/api/v1/chatmessage/abort/{chatflow_id}/{chat_id}"


def cancel_url(prediction_id: object) -> str:
    return f"/api/v1/predictions/{prediction_id}/cancel"


async def _read_until_tokens(iterator, count: int) -> bytes:
    """Read a stream until `count` token frames have arrived."""
    received = b""
    while received.count(b'"event":"token"') < count:
        received += await anext(iterator)
    return received


async def _start_slow_stream(api: AsyncClient, chatflow, chat_id: str = "chat-1"):
    """Start a slow streaming prediction and read it until two tokens have arrived."""
    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi", "streaming": True, "chatId": chat_id}
    )
    iterator = aiter(response.streaming_content)
    received = await _read_until_tokens(iterator, 2)
    prediction = await Prediction.objects.aget()
    return iterator, received, prediction


async def _rest(iterator) -> bytes:
    return b"".join([chunk async for chunk in iterator])


async def _not_in_flight(prediction_id: object) -> None:
    async def gone() -> bool:
        return str(prediction_id) not in local.in_flight()

    await wait_until(gone)


# --- abort by chat ------------------------------------------------------------------------------


async def test_chatmessage_abort_answers_like_flowise(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW))
    iterator, _, _ = await _start_slow_stream(api, chatflow)

    response = await api.put(abort_url(chatflow.id, "chat-1"))
    await _rest(iterator)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 200
    assert body["message"] == "Chat message aborted"


async def test_chatmessage_abort_ends_the_stream_with_abort_then_end(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW))
    iterator, received, _ = await _start_slow_stream(api, chatflow)

    await api.put(abort_url(chatflow.id, "chat-1"))
    frames = parse_frames(received + await _rest(iterator))

    names = events(frames)
    assert names[0] == "start"
    assert names[-2:] == ["abort", "end"]
    assert frames[-2]["data"] == "[DONE]"
    assert names.count("token") < 200
    assert "metadata" not in names
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))


async def test_chatmessage_abort_cancels_the_prediction_for_good(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW))
    iterator, _, prediction = await _start_slow_stream(api, chatflow)

    await api.put(abort_url(chatflow.id, "chat-1"))
    await _rest(iterator)
    await _not_in_flight(prediction.id)

    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.CANCELLED
    assert prediction.error_code == "cancelled"
    assert prediction.result is None
    assert await ChatMessage.objects.acount() == 0


async def test_chatmessage_abort_leaves_other_chats_running(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=5, delay_ms=10))
    iterator, _, prediction = await _start_slow_stream(api, chatflow, chat_id="chat-1")

    response = await api.put(abort_url(chatflow.id, "chat-2"))
    frames = parse_frames(await _rest(iterator))

    assert response.json()["aborted"] == 0
    assert events(frames)[-2:] == ["metadata", "end"]
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.SUCCEEDED


async def test_chatmessage_abort_stops_a_json_prediction_with_409(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW))
    request = asyncio.create_task(
        post_json(api, prediction_url(chatflow.id), {"question": "hi", "chatId": "chat-1"})
    )

    async def running() -> bool:
        return await Prediction.objects.filter(status=PredictionStatus.RUNNING).aexists()

    await wait_until(running)
    await api.put(abort_url(chatflow.id, "chat-1"))
    response = await request

    assert response.status_code == 409
    assert error_of(response)["code"] == "cancelled"
    assert await ChatMessage.objects.acount() == 0


async def test_chatmessage_abort_requires_the_chatflow_key(api: AsyncClient):
    key, raw = await acreate_apikey(name="flow key")
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW), api_key=key)
    response = await post_json(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "streaming": True, "chatId": "chat-1"},
        Authorization=f"Bearer {raw}",
    )
    iterator = aiter(response.streaming_content)
    await _read_until_tokens(iterator, 1)

    refused = await api.put(abort_url(chatflow.id, "chat-1"))
    prediction = await Prediction.objects.aget()
    accepted = await api.put(
        abort_url(chatflow.id, "chat-1"), headers={"Authorization": f"Bearer {raw}"}
    )
    await _rest(iterator)

    assert refused.status_code == 401
    assert error_of(refused)["code"] == "api_key_required"
    assert prediction.status == PredictionStatus.RUNNING
    assert accepted.status_code == 200


async def test_chatmessage_abort_unknown_chatflow_is_404(api: AsyncClient):
    response = await api.put(abort_url("00000000-0000-4000-8000-000000000000", "chat-1"))

    assert response.status_code == 404
    assert error_of(response)["code"] == "chatflow_not_found"


async def test_chatmessage_abort_with_post_is_405(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await api.post(abort_url(chatflow.id, "chat-1"))

    assert response.status_code == 405


# --- cancel by prediction id --------------------------------------------------------------------


async def test_prediction_cancel_stops_a_running_prediction(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(**SLOW))
    iterator, _, prediction = await _start_slow_stream(api, chatflow)

    response = await api.post(cancel_url(prediction.id))
    frames = parse_frames(await _rest(iterator))

    assert response.json() == {
        "status": 200,
        "message": "Prediction cancelled",
        "predictionStatus": "cancelled",
    }
    assert events(frames)[-2:] == ["abort", "end"]
    await _not_in_flight(prediction.id)
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.CANCELLED


async def test_prediction_cancel_after_success_is_a_harmless_no_op(api: AsyncClient):
    chatflow = await acreate_chatflow()
    await post_json(api, prediction_url(chatflow.id), {"question": "hi"})
    prediction = await Prediction.objects.aget()

    response = await api.post(cancel_url(prediction.id))

    assert response.status_code == 200
    assert response.json()["message"] == "Prediction already succeeded"
    assert response.json()["predictionStatus"] == "succeeded"
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.SUCCEEDED
    assert await ChatMessage.objects.acount() == 2


async def test_prediction_cancel_requires_the_chatflow_key(api: AsyncClient):
    key, raw = await acreate_apikey(name="flow key")
    chatflow = await acreate_chatflow(api_key=key)
    await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Authorization=f"Bearer {raw}"
    )
    prediction = await Prediction.objects.aget()

    response = await api.post(cancel_url(prediction.id))

    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_required"


async def test_prediction_cancel_unknown_is_404(api: AsyncClient):
    response = await api.post(cancel_url("00000000-0000-4000-8000-000000000000"))

    assert response.status_code == 404


async def test_prediction_cancel_during_save_still_ends_the_stream_consistently(
    api: AsyncClient, monkeypatch, settings
):
    settings.PREDICTION_TIMEOUT = 0.4  # the stream gives up 0.6 s after it started
    settings.PREDICTION_TIMEOUT_MARGIN = 0.2
    settings.SSE_HEARTBEAT_SECONDS = 0.05
    saving, release = threading.Event(), threading.Event()
    finish = services.prediction_finish

    def slow_finish(**kwargs):
        saving.set()
        release.wait(5)
        return finish(**kwargs)

    monkeypatch.setattr(services, "prediction_finish", slow_finish)
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=3, delay_ms=20))

    async def stream() -> bytes:
        async with request_context():
            response = await post_json(
                api,
                prediction_url(chatflow.id),
                {"question": "hi", "streaming": True, "chatId": "c"},
            )
            return await read_stream(response)

    async def saving_started() -> bool:
        return saving.is_set()

    reader = asyncio.create_task(stream())
    await wait_until(saving_started)
    async with request_context():
        aborted = await api.put(abort_url(chatflow.id, "c"))
    release.set()
    frames = parse_frames(await reader)

    assert aborted.json()["aborted"] == 1
    prediction = await Prediction.objects.aget()
    expected_ending = {
        PredictionStatus.SUCCEEDED: ["metadata", "end"],
        PredictionStatus.CANCELLED: ["abort", "end"],
    }[prediction.status]
    assert events(frames)[-2:] == expected_ending


# --- clients that leave -------------------------------------------------------------------------


async def test_prediction_stream_client_leaving_lets_the_prediction_complete(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=20, delay_ms=10))
    async with request_context():  # the request ends while the prediction runs on
        response = await post_json(
            api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}
        )
        iterator = aiter(response.streaming_content)
        await _read_until_tokens(iterator, 2)
        leaving = asyncio.create_task(anext(iterator))
        await asyncio.sleep(0)
        leaving.cancel()  # what the ASGI handler does when the client disconnects
        await asyncio.gather(leaving, return_exceptions=True)
    prediction = await Prediction.objects.aget()

    await _not_in_flight(prediction.id)

    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.SUCCEEDED
    expected = "".join(f"tok{i} " for i in range(20))
    assert prediction.result["text"] == expected
    messages = [m async for m in ChatMessage.objects.order_by("created_at")]
    assert [(m.role, m.content) for m in messages] == [
        ("userMessage", "hi"),
        ("apiMessage", expected),
    ]


async def test_prediction_run_outliving_its_request_hands_its_connection_back(api: AsyncClient):
    from django.db import connections

    pool = connections["default"].pool
    if pool is None:
        pytest.skip("needs the PostgreSQL connection pool (DATABASE_URL=postgres://…)")
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=20, delay_ms=10))

    def checked_out() -> int:
        stats = pool.get_stats()
        return stats["pool_size"] - stats["pool_available"]

    before = checked_out()
    async with request_context():  # the request ends while the prediction runs on
        response = await post_json(
            api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}
        )
        iterator = aiter(response.streaming_content)
        await _read_until_tokens(iterator, 2)
        await iterator.aclose()
    prediction = await Prediction.objects.aget()
    await _not_in_flight(prediction.id)

    async def all_given_back() -> bool:
        return checked_out() <= before

    # The run's last ORM calls came after its request had ended: nothing may stay checked out.
    await wait_until(all_given_back)


async def test_prediction_stream_closed_early_lets_the_prediction_complete(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=20, delay_ms=10))
    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}
    )
    iterator = aiter(response.streaming_content)
    await _read_until_tokens(iterator, 1)
    await iterator.aclose()
    prediction = await Prediction.objects.aget()

    await _not_in_flight(prediction.id)

    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.SUCCEEDED
    assert await ChatMessage.objects.acount() == 2


async def test_prediction_events_resume_after_the_client_left(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=10, delay_ms=10))
    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}
    )
    iterator = aiter(response.streaming_content)
    first = parse_frames(await _read_until_tokens(iterator, 2))
    await iterator.aclose()
    prediction = await Prediction.objects.aget()

    resumed = await api.get(
        f"/api/v1/predictions/{prediction.id}/events",
        headers={"Last-Event-ID": str(first[-1]["seq"])},
    )
    rest = parse_frames(await read_stream(resumed))

    frames = first + rest
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    tokens = "".join(f["data"] for f in frames if f["event"] == "token")
    assert tokens == "".join(f"tok{i} " for i in range(10))
    assert events(frames)[-2:] == ["metadata", "end"]
