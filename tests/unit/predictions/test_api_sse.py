"""Predictions streamed as SSE (Flowise's frames plus `id:`), failures, and resuming a stream."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from predictions.engine.providers import split_tokens
from predictions.events import reset_transport
from predictions.models import ChatMessage, Prediction, PredictionStatus
from tests.conftest import offline_flow
from tests.unit.engine.openai_stub import OpenAIStub, Reply
from tests.unit.helpers import (
    acreate_chatflow,
    error_of,
    events,
    openai_conversation_flow,
    parse_frames,
    post_json,
    prediction_url,
    read_stream,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_heartbeats(settings):
    """Exact-bytes assertions must not meet a heartbeat; tests that want them lower this."""
    settings.SSE_HEARTBEAT_SECONDS = 30


def frame(seq: int, event: str, data: str) -> bytes:
    """Return one frame as the contract spells it, `data` being the JSON text of the payload."""
    return f'message:\ndata:{{"event":"{event}","data":{data}}}\nid:{seq}\n\n'.encode()


async def _stream(api: AsyncClient, chatflow_id: object, **body):
    body.setdefault("question", "hi")
    body.setdefault("streaming", True)
    response = await post_json(api, prediction_url(chatflow_id), body)
    assert response.status_code == 200
    return response, await read_stream(response)


async def test_prediction_stream_has_event_stream_headers(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response, _ = await _stream(api, chatflow.id)

    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert response["Connection"] == "keep-alive"


async def test_prediction_stream_is_exactly_flowise_frames_with_ids(api: AsyncClient):
    chatflow = await acreate_chatflow()

    _, body = await _stream(api, chatflow.id, chatId="chat-1")

    prediction = await Prediction.objects.aget()
    text = prediction.result["text"]
    tokens = split_tokens(text)
    expected = [frame(1, "start", '""')]
    expected += [
        frame(seq, "token", json.dumps(token, ensure_ascii=False))
        for seq, token in enumerate(tokens, start=2)
    ]
    metadata = (
        f'{{"chatId":"chat-1","chatMessageId":"{prediction.chat_message_id}",'
        f'"question":"hi","sessionId":"chat-1","memoryType":"Buffer Memory"}}'
    )
    expected.append(frame(len(tokens) + 2, "metadata", metadata))
    expected.append(frame(len(tokens) + 3, "end", '"[DONE]"'))
    assert body == b"".join(expected)


async def test_prediction_stream_events_come_in_order_with_consecutive_ids(api: AsyncClient):
    chatflow = await acreate_chatflow()

    _, body = await _stream(api, chatflow.id)

    frames = parse_frames(body)
    names = events(frames)
    assert names[0] == "start"
    assert names[-2:] == ["metadata", "end"]
    assert set(names[1:-2]) == {"token"}
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[0]["data"] == ""
    assert frames[-1]["data"] == "[DONE]"


async def test_prediction_stream_tokens_join_to_the_stored_answer(api: AsyncClient):
    chatflow = await acreate_chatflow()

    _, body = await _stream(api, chatflow.id)

    tokens = [f["data"] for f in parse_frames(body) if f["event"] == "token"]
    prediction = await Prediction.objects.aget()
    answer = await ChatMessage.objects.aget(role="apiMessage")
    assert "".join(tokens) == prediction.result["text"] == answer.content


async def test_prediction_stream_metadata_names_the_chat(api: AsyncClient):
    chatflow = await acreate_chatflow()

    _, body = await _stream(api, chatflow.id, chatId="chat-1", question="hello there")

    metadata = next(f["data"] for f in parse_frames(body) if f["event"] == "metadata")
    prediction = await Prediction.objects.aget()
    assert metadata == {
        "chatId": "chat-1",
        "chatMessageId": str(prediction.chat_message_id),
        "question": "hello there",
        "sessionId": "chat-1",
        "memoryType": "Buffer Memory",
    }
    assert prediction.streaming is True
    assert prediction.status == PredictionStatus.SUCCEEDED


async def test_prediction_stream_json_is_compact(api: AsyncClient):
    chatflow = await acreate_chatflow()

    _, body = await _stream(api, chatflow.id)

    data_lines = [line for line in body.decode().split("\n") if line.startswith("data:")]
    assert data_lines
    for line in data_lines:
        payload = json.loads(line[len("data:") :])
        assert line[len("data:") :] == json.dumps(
            payload, separators=(",", ":"), ensure_ascii=False
        )


async def test_prediction_stream_keeps_non_ascii_text_as_utf8(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(reply="Grüße — 你好"))

    _, body = await _stream(api, chatflow.id)

    assert 'data:{"event":"token","data":"Grüße "}'.encode() in body
    tokens = [f["data"] for f in parse_frames(body) if f["event"] == "token"]
    assert "".join(tokens) == "Grüße — 你好"


async def test_prediction_stream_accepts_the_string_true(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response, body = await _stream(api, chatflow.id, streaming="true")

    assert response["Content-Type"] == "text/event-stream"
    assert events(parse_frames(body))[-1] == "end"


async def test_prediction_stream_sends_heartbeats_while_waiting(api: AsyncClient, settings):
    settings.SSE_HEARTBEAT_SECONDS = 0.02
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=3, delay_ms=100))

    _, body = await _stream(api, chatflow.id)

    assert b":heartbeat\n\n" in body
    frames = parse_frames(body)
    assert [f["data"] for f in frames if f["event"] == "token"] == ["tok0 ", "tok1 ", "tok2 "]


async def test_prediction_stream_on_non_streaming_flow_answers_json(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.script(Reply.ok(["A queue ", "is FIFO."]))
    chatflow = await acreate_chatflow(
        flow_data=openai_conversation_flow(openai_stub.base_url, streaming=False)
    )

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["text"] == "A queue is FIFO."
    assert openai_stub.last_request.json["stream"] is False
    prediction = await Prediction.objects.aget()
    assert prediction.streaming is False


# --- failures -----------------------------------------------------------------------------------


async def test_prediction_stream_failure_sends_start_error_end(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.error(500, "model exploded")
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(openai_stub.base_url))

    response, body = await _stream(api, chatflow.id)

    assert response.status_code == 200
    frames = parse_frames(body)
    assert events(frames) == ["start", "error", "end"]
    assert isinstance(frames[1]["data"], str)
    assert "HTTP 500" in frames[1]["data"]
    assert [f["seq"] for f in frames] == [1, 2, 3]


async def test_prediction_stream_failure_records_failed_prediction_without_messages(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.error(500)
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(openai_stub.base_url))

    await _stream(api, chatflow.id)

    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.FAILED
    assert prediction.error_code == "provider_bad_response"
    assert await ChatMessage.objects.acount() == 0


async def test_prediction_json_failure_is_502_provider_bad_response(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.error(500, "model exploded")
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(openai_stub.base_url))

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "provider_bad_response"
    assert "model exploded" in error["message"]
    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.FAILED
    assert prediction.error_code == "provider_bad_response"
    assert await ChatMessage.objects.acount() == 0


async def test_prediction_json_unreachable_model_is_502_provider_unreachable(
    api: AsyncClient, refused_base_url: str
):
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(refused_base_url))

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 502
    assert error_of(response)["code"] == "provider_unreachable"
    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.FAILED
    assert prediction.error_code == "provider_unreachable"
    assert await ChatMessage.objects.acount() == 0


async def test_prediction_stream_unreachable_model_sends_error_frame(
    api: AsyncClient, refused_base_url: str
):
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(refused_base_url))

    _, body = await _stream(api, chatflow.id)

    assert events(parse_frames(body)) == ["start", "error", "end"]


async def test_prediction_stream_past_prediction_timeout_sends_error_then_end(
    api: AsyncClient, settings
):
    settings.PREDICTION_TIMEOUT = 0.2
    settings.PREDICTION_TIMEOUT_MARGIN = 0.2
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=100, delay_ms=20))

    _, body = await _stream(api, chatflow.id)

    frames = parse_frames(body)
    assert events(frames)[-2:] == ["error", "end"]
    assert "PREDICTION_TIMEOUT" in frames[-2]["data"]
    prediction = await Prediction.objects.aget()
    assert prediction.error_code == "prediction_timeout"


# --- resuming -----------------------------------------------------------------------------------


def _events_url(prediction_id: object) -> str:
    return f"/api/v1/predictions/{prediction_id}/events"


async def test_prediction_events_resume_after_last_event_id(api: AsyncClient):
    chatflow = await acreate_chatflow()
    _, full = await _stream(api, chatflow.id)
    prediction = await Prediction.objects.aget()

    response = await api.get(_events_url(prediction.id), headers={"Last-Event-ID": "3"})
    body = await read_stream(response)

    assert response["Content-Type"] == "text/event-stream"
    frames = parse_frames(full)
    assert parse_frames(body) == frames[3:]
    assert [f["seq"] for f in parse_frames(body)] == list(range(4, len(frames) + 1))
    assert full.endswith(body)


async def test_prediction_events_resume_after_seq_query(api: AsyncClient):
    chatflow = await acreate_chatflow()
    _, full = await _stream(api, chatflow.id)
    prediction = await Prediction.objects.aget()

    response = await api.get(_events_url(prediction.id), {"after_seq": "3"})
    body = await read_stream(response)

    assert parse_frames(body) == parse_frames(full)[3:]


async def test_prediction_events_from_the_start_replay_everything(api: AsyncClient):
    chatflow = await acreate_chatflow()
    _, full = await _stream(api, chatflow.id)
    prediction = await Prediction.objects.aget()

    response = await api.get(_events_url(prediction.id))

    assert await read_stream(response) == full


async def test_prediction_events_gone_are_answered_from_the_database(api: AsyncClient):
    chatflow = await acreate_chatflow()
    await _stream(api, chatflow.id, chatId="chat-1")
    prediction = await Prediction.objects.aget()
    reset_transport()

    response = await api.get(_events_url(prediction.id))
    frames = parse_frames(await read_stream(response))

    assert events(frames) == ["start", "token", "metadata", "end"]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]
    assert frames[1]["data"] == prediction.result["text"]
    assert frames[2]["data"] == {
        "chatId": "chat-1",
        "chatMessageId": str(prediction.chat_message_id),
        "question": "hi",
        "sessionId": "chat-1",
        "memoryType": "Buffer Memory",
    }
    assert frames[3]["data"] == "[DONE]"


async def test_prediction_events_gone_for_failed_prediction_send_error(
    api: AsyncClient, refused_base_url: str
):
    chatflow = await acreate_chatflow(flow_data=openai_conversation_flow(refused_base_url))
    await _stream(api, chatflow.id)
    prediction = await Prediction.objects.aget()
    reset_transport()

    response = await api.get(_events_url(prediction.id))
    frames = parse_frames(await read_stream(response))

    assert events(frames) == ["start", "error", "end"]
    assert frames[1]["data"] == prediction.error_message


async def test_prediction_events_resume_after_the_end_closes_at_once(api: AsyncClient, settings):
    settings.PREDICTION_TIMEOUT = 0.2
    settings.PREDICTION_TIMEOUT_MARGIN = 0.2
    settings.SSE_HEARTBEAT_SECONDS = 0.05
    chatflow = await acreate_chatflow()
    _, full = await _stream(api, chatflow.id)
    last = parse_frames(full)[-1]["seq"]
    prediction = await Prediction.objects.aget()

    response = await api.get(_events_url(prediction.id), headers={"Last-Event-ID": str(last)})
    body = await read_stream(response)

    assert parse_frames(body) == []
    assert b":heartbeat" not in body


@pytest.mark.parametrize("value", ["abc", "-1"])
async def test_prediction_events_bad_last_event_id_is_400(api: AsyncClient, value: str):
    chatflow = await acreate_chatflow()
    await _stream(api, chatflow.id)
    prediction = await Prediction.objects.aget()

    response = await api.get(_events_url(prediction.id), headers={"Last-Event-ID": value})

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


async def test_prediction_events_unknown_prediction_is_404(api: AsyncClient):
    response = await api.get(_events_url("00000000-0000-4000-8000-000000000000"))

    assert response.status_code == 404
    assert error_of(response)["code"] == "prediction_not_found"
