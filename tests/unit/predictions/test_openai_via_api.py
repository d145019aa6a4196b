"""chatOpenAI over real HTTP (our OpenAI-compatible stub), driven through the prediction API."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from predictions.models import Chatflow, ChatMessage, Prediction, PredictionStatus
from tests.unit.engine.openai_stub import OpenAIStub, Reply
from tests.unit.helpers import (
    acreate_chatflow,
    error_of,
    events,
    openai_flow,
    parse_frames,
    post_json,
    prediction_url,
    read_stream,
)

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLE_BASEPATH = "http://127.0.0.1:18999/v1"  # where the export points (Flowise's test server)


async def _ask(api: AsyncClient, chatflow, **body):
    body.setdefault("question", "what is a queue?")
    return await post_json(api, prediction_url(chatflow.id), body)


async def test_openai_stream_tokens_arrive_as_token_frames_in_order(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.script(Reply.ok(["A ", "queue ", "is ", "FIFO."]))
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await _ask(api, chatflow, streaming=True)
    frames = parse_frames(await read_stream(response))

    assert events(frames) == ["start", "token", "token", "token", "token", "metadata", "end"]
    assert [f["data"] for f in frames if f["event"] == "token"] == ["A ", "queue ", "is ", "FIFO."]
    assert openai_stub.last_request.json["stream"] is True
    prediction = await Prediction.objects.aget()
    assert prediction.result["text"] == "A queue is FIFO."


async def test_openai_json_answer_is_the_model_text(api: AsyncClient, openai_stub: OpenAIStub):
    openai_stub.script(Reply.ok(["A queue ", "is FIFO."]))
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await _ask(api, chatflow)

    assert response.status_code == 200
    assert response.json()["text"] == "A queue is FIFO."
    assert openai_stub.last_request.json["messages"] == [
        {"role": "user", "content": "what is a queue?"}
    ]


async def test_openai_sends_the_configured_api_key(
    api: AsyncClient, openai_stub: OpenAIStub, settings
):
    settings.OPENAI_API_KEY = "sk-test-configured"
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    await _ask(api, chatflow)

    assert openai_stub.last_request.headers["authorization"] == "Bearer sk-test-configured"


async def _failure(api: AsyncClient, chatflow, status: int, code: str) -> dict:
    response = await _ask(api, chatflow)
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["code"] == code
    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.FAILED
    assert prediction.error_code == code
    assert await ChatMessage.objects.acount() == 0
    return error


async def test_openai_unauthorized_is_502_provider_unauthorized(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.error(401, "Incorrect API key provided")
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    error = await _failure(api, chatflow, 502, "provider_unauthorized")

    assert "chatOpenAI_0" in error["message"]
    assert "HTTP 401" in error["message"]


async def test_openai_error_message_never_shows_the_api_key(
    api: AsyncClient, openai_stub: OpenAIStub, settings
):
    settings.OPENAI_API_KEY = "sk-very-secret-key"
    openai_stub.default = Reply.error(401, "Incorrect API key provided: sk-very-secret-key")
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    error = await _failure(api, chatflow, 502, "provider_unauthorized")

    assert "sk-very-secret-key" not in error["message"]
    prediction = await Prediction.objects.aget()
    assert "sk-very-secret-key" not in prediction.error_message


async def test_openai_rate_limited_is_502_provider_rate_limited(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.error(429, "Rate limit reached")
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    await _failure(api, chatflow, 502, "provider_rate_limited")


async def test_openai_read_timeout_of_the_node_is_504_provider_timeout(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.hang(3)
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url, timeout=200))

    error = await _failure(api, chatflow, 504, "provider_timeout")

    assert "read timeout" in error["message"]


async def test_openai_read_timeout_from_settings_ends_a_stalled_stream_with_provider_timeout(
    api: AsyncClient, openai_stub: OpenAIStub, settings
):
    settings.LLM_READ_TIMEOUT = 0.2
    openai_stub.default = Reply.hang(3)
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await _ask(api, chatflow, streaming=True)
    frames = parse_frames(await read_stream(response))

    assert events(frames)[-2:] == ["error", "end"]
    prediction = await Prediction.objects.aget()
    assert prediction.error_code == "provider_timeout"


async def test_openai_non_streaming_answer_may_take_longer_than_the_read_timeout(
    api: AsyncClient, openai_stub: OpenAIStub, settings
):
    # A whole answer arrives only after the whole generation: PREDICTION_TIMEOUT bounds it.
    settings.LLM_READ_TIMEOUT = 0.2
    openai_stub.default = Reply.ok(["slow ", "answer"], delay=0.6)
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await _ask(api, chatflow)

    assert response.status_code == 200, response.content
    assert response.json()["text"] == "slow answer"
    assert openai_stub.last_request.json["stream"] is False


async def test_openai_malformed_chunk_is_502_provider_bad_response(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.malformed()
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    await _failure(api, chatflow, 502, "provider_bad_response")


async def test_openai_malformed_chunk_streamed_ends_with_error_after_the_good_token(
    api: AsyncClient, openai_stub: OpenAIStub
):
    openai_stub.default = Reply.malformed()
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await _ask(api, chatflow, streaming=True)
    frames = parse_frames(await read_stream(response))

    assert events(frames) == ["start", "token", "error", "end"]
    assert frames[1]["data"] == "Hello"
    assert await ChatMessage.objects.acount() == 0


async def test_openai_unreachable_server_is_502_provider_unreachable(
    api: AsyncClient, refused_base_url: str
):
    chatflow = await acreate_chatflow(flow_data=openai_flow(refused_base_url))

    await _failure(api, chatflow, 502, "provider_unreachable")


# --- the real Flowise export --------------------------------------------------------------------


async def test_openai_example_flow_imports_through_the_api_and_answers(
    api: AsyncClient, openai_stub: OpenAIStub, staff_user, example_flow_data: str
):
    assert EXAMPLE_BASEPATH in example_flow_data
    flow_data = example_flow_data.replace(EXAMPLE_BASEPATH, openai_stub.base_url)
    openai_stub.script(Reply.ok(["A queue ", "is FIFO."]))
    await api.aforce_login(staff_user)

    created = await post_json(api, "/api/v1/chatflows", {"name": "example", "flowData": flow_data})
    chatflow = await Chatflow.objects.aget(id=created.json()["id"])
    streaming = await api.get(f"/api/v1/chatflows-streaming/{chatflow.id}")
    answer = await _ask(api, chatflow)

    assert created.status_code == 200
    assert json.loads(created.json()["flowData"]) == json.loads(flow_data)
    assert streaming.json() == {"isStreaming": True}
    assert answer.status_code == 200
    assert answer.json()["text"] == "A queue is FIFO."
    assert "memoryType" not in answer.json()
    [request] = openai_stub.requests
    assert request.json["messages"] == [
        {
            "role": "user",
            "content": (
                "You are a terse assistant for Flowsite.\nAnswer the question: what is a queue?"
            ),
        }
    ]
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["temperature"] == 0.7
