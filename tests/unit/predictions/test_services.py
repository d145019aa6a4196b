"""predictions.services: chatflows, keys, and the prediction lifecycle rules (main mode)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from unittest.mock import patch

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError

from predictions import local, services
from predictions.engine import FlowValidationError
from predictions.events import get_transport
from predictions.models import Chatflow, ChatMessage, Prediction, PredictionStatus
from tests.conftest import offline_flow
from tests.unit.engine.flows import conversation, flow_json

UNKNOWN_NODE_FLOW = flow_json([conversation("conversationChain_0", model="nowhere_0")])


def _request(**fields) -> services.PredictionRequest:
    values = {
        "question": "hi",
        "chat_id": "chat-1",
        "session_id": "chat-1",
        "streaming": True,
        "override_config": {},
        "history": [],
    }
    values.update(fields)
    return services.PredictionRequest(**values)


# --- chatflows and keys -------------------------------------------------------------------------


@pytest.mark.django_db
def test_chatflow_create_stores_flow_data_as_a_json_string():
    flow_object = json.loads(offline_flow())

    chatflow = services.chatflow_create(name="f", flow_data=flow_object)

    chatflow.refresh_from_db()
    assert isinstance(chatflow.flow_data, str)
    assert json.loads(chatflow.flow_data) == flow_object
    assert chatflow.is_streaming is True


@pytest.mark.django_db
def test_chatflow_create_refuses_an_invalid_flow_and_stores_nothing():
    with pytest.raises(FlowValidationError) as excinfo:
        services.chatflow_create(name="f", flow_data=UNKNOWN_NODE_FLOW)

    assert excinfo.value.code == "dangling_reference"
    assert "nowhere_0" in excinfo.value.message
    assert not Chatflow.objects.exists()


@pytest.mark.django_db
def test_chatflow_update_refuses_an_invalid_flow_and_changes_nothing(make_chatflow):
    chatflow = make_chatflow(name="before")
    flow_data = chatflow.flow_data

    with pytest.raises(FlowValidationError):
        services.chatflow_update(chatflow=chatflow, name="after", flow_data=UNKNOWN_NODE_FLOW)

    stored = Chatflow.objects.get(id=chatflow.id)
    assert stored.name == "before"
    assert stored.flow_data == flow_data


@pytest.mark.django_db
def test_apikey_create_returns_the_raw_key_and_stores_its_hash():
    key, raw = services.apikey_create(name="k", can_manage=True)

    key.refresh_from_db()
    assert key.matches(raw)
    assert not key.matches(raw + "x")
    assert raw not in (key.key_hash, key.prefix)
    assert key.can_manage is True


# --- prediction lifecycle -----------------------------------------------------------------------


@pytest.mark.django_db
def test_prediction_create_stores_a_queued_prediction_in_main_mode(make_chatflow):
    chatflow = make_chatflow()

    prediction = services.prediction_create(chatflow=chatflow, request=_request())

    prediction.refresh_from_db()
    assert prediction.status == PredictionStatus.QUEUED
    assert prediction.request == {
        "question": "hi",
        "overrideConfig": {},
        "history": [],
        "streaming": True,
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [PredictionStatus.SUCCEEDED, PredictionStatus.FAILED, PredictionStatus.CANCELLED]
)
def test_prediction_fail_never_overwrites_a_terminal_status(make_chatflow, status):
    prediction = services.prediction_create(chatflow=make_chatflow(), request=_request())
    Prediction.objects.filter(id=prediction.id).update(status=status, error_code="")

    changed = services.prediction_fail(prediction_id=str(prediction.id), code="x", message="y")

    prediction.refresh_from_db()
    assert changed is False
    assert prediction.status == status
    assert prediction.error_code == ""


@pytest.mark.django_db
def test_prediction_finish_refuses_a_prediction_that_is_not_running(make_chatflow):
    prediction = services.prediction_create(chatflow=make_chatflow(), request=_request())
    services.prediction_fail(
        prediction_id=str(prediction.id),
        code="cancelled",
        message="stopped",
        status=PredictionStatus.CANCELLED,
    )

    finished = services.prediction_finish(prediction=prediction, body={"text": "late"})

    prediction.refresh_from_db()
    assert finished is False
    assert prediction.status == PredictionStatus.CANCELLED
    assert prediction.result is None
    assert not ChatMessage.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_prediction_run_does_not_run_a_cancelled_prediction(make_chatflow):
    chatflow = await sync_to_async(make_chatflow)()
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())
    await services.aprediction_cancel(prediction=prediction)

    await services.aprediction_run(str(prediction.id))

    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.CANCELLED
    assert prediction.attempts == 0
    assert await ChatMessage.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_prediction_cancel_of_a_queued_prediction_emits_abort_and_end(make_chatflow):
    chatflow = await sync_to_async(make_chatflow)()
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())

    status = await services.aprediction_cancel(prediction=prediction)

    assert status == PredictionStatus.CANCELLED
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.CANCELLED
    read = get_transport().read(str(prediction.id), after_seq=0, heartbeat=1)
    names = [event["event"] async for event in read if event is not None]
    assert names == ["abort", "end"]


@pytest.mark.django_db(transaction=True)
async def test_prediction_cancel_of_a_finished_prediction_changes_nothing(make_chatflow):
    chatflow = await sync_to_async(make_chatflow)()
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())
    await services.aprediction_run(str(prediction.id))
    await prediction.arefresh_from_db()

    status = await services.aprediction_cancel(prediction=prediction)

    assert status == PredictionStatus.SUCCEEDED
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
async def test_prediction_run_emits_start_tokens_metadata_end(make_chatflow):
    chatflow = await sync_to_async(make_chatflow)(flow_data=offline_flow(tokens=3))
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())

    await services.aprediction_run(str(prediction.id), worker_name="test")

    read = get_transport().read(str(prediction.id), after_seq=0, heartbeat=1)
    got = [(e["event"], e["data"]) async for e in read if e is not None]
    assert [name for name, _ in got] == ["start", "token", "token", "token", "metadata", "end"]
    await prediction.arefresh_from_db()
    assert prediction.worker_name == "test"
    assert prediction.attempts == 1
    assert prediction.result["text"] == "tok0 tok1 tok2 "


@pytest.mark.django_db(transaction=True)
async def test_prediction_run_without_streaming_emits_no_tokens(make_chatflow):
    chatflow = await sync_to_async(make_chatflow)(flow_data=offline_flow(tokens=3))
    prediction = await services.aprediction_create(
        chatflow=chatflow, request=_request(streaming=False)
    )

    await services.aprediction_run(str(prediction.id))

    read = get_transport().read(str(prediction.id), after_seq=0, heartbeat=1)
    names = [e["event"] async for e in read if e is not None]
    assert names == ["start", "metadata", "end"]


@pytest.mark.django_db(transaction=True)
async def test_prediction_run_memory_reads_at_most_max_history_messages(make_chatflow, settings):
    settings.MAX_HISTORY_MESSAGES = 2
    chatflow = await sync_to_async(make_chatflow)()
    for question in ("one", "two", "three"):
        prediction = await services.aprediction_create(
            chatflow=chatflow, request=_request(question=question)
        )
        await services.aprediction_run(str(prediction.id))

    await prediction.arefresh_from_db()
    assert "I remember 2 earlier messages" in prediction.result["text"]
    assert await ChatMessage.objects.acount() == 6


@pytest.mark.django_db(transaction=True)
async def test_a_stop_that_a_token_write_swallowed_ends_the_run_at_once(make_chatflow):
    # Python 3.11's wait_for (around every command redis-py sends) returns the result of what it
    # waited for when a cancellation comes just as that is done: the stop is swallowed.
    chatflow = await sync_to_async(make_chatflow)(flow_data=offline_flow(tokens=3, delay_ms=60_000))
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())
    pid = str(prediction.id)
    transport = get_transport()
    write = transport.publish_many
    in_write = asyncio.Event()

    async def swallowing(prediction_id, events, reply_to=None):
        await write(prediction_id, events, reply_to)
        if events[-1]["event"] == "token" and not in_write.is_set():
            in_write.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    run = asyncio.ensure_future(services.aprediction_run(pid))
    with patch.object(transport, "publish_many", swallowing):
        await asyncio.wait_for(in_write.wait(), 5)
        local.request_cancel(pid)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 5)  # not after the next token, a minute later

    read = transport.read(pid, after_seq=0, heartbeat=1)
    names = [e["event"] async for e in read if e is not None]
    assert names == ["start", "token", "abort", "end"]
    await prediction.arefresh_from_db()
    assert prediction.status == PredictionStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
async def test_prediction_run_reads_its_input_again_when_the_database_failed_them_after_the_claim(
    make_chatflow, monkeypatch
):
    chatflow = await sync_to_async(make_chatflow)(flow_data=offline_flow(tokens=3))
    prediction = await services.aprediction_create(chatflow=chatflow, request=_request())
    real_run_input = services._run_input
    calls = []

    def flaky_run_input(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real_run_input(*args)

    monkeypatch.setattr(services, "_run_input", flaky_run_input)

    await services.aprediction_run(str(prediction.id), worker_name="test")

    assert len(calls) == 2
    await prediction.arefresh_from_db()
    assert prediction.attempts == 1  # claimed once
    assert prediction.result["text"] == "tok0 tok1 tok2 "
