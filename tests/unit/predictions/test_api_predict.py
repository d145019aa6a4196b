"""POST /api/v1/prediction/<id> answered as JSON (main mode): body, bookkeeping, memory, errors."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from predictions.models import ChatMessage, Prediction, PredictionStatus
from tests.conftest import offline_flow
from tests.unit.helpers import (
    acreate_apikey,
    acreate_chatflow,
    error_of,
    post_json,
    prediction_url,
)

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def _predict(api: AsyncClient, chatflow_id: object, **body) -> dict:
    body.setdefault("question", "hi")
    response = await post_json(api, prediction_url(chatflow_id), body)
    assert response.status_code == 200, response.content
    return json.loads(response.content)


# --- the answer ---------------------------------------------------------------------------------


async def test_prediction_create_answers_with_flowise_keys_in_order(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id)

    assert list(body) == [
        "text",
        "question",
        "chatId",
        "chatMessageId",
        "isStreamValid",
        "sessionId",
        "memoryType",
    ]
    assert body["question"] == "hi"
    assert body["isStreamValid"] is False
    assert body["memoryType"] == "Buffer Memory"
    assert body["text"].startswith("Offline model here")


async def test_prediction_create_answers_json_content_type(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response["Content-Type"] == "application/json"


async def test_prediction_create_omits_memory_type_without_memory(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(memory=False))

    body = await _predict(api, chatflow.id)

    assert "memoryType" not in body
    assert list(body) == [
        "text",
        "question",
        "chatId",
        "chatMessageId",
        "isStreamValid",
        "sessionId",
    ]


async def test_prediction_create_new_chat_gets_a_uuid_chat_id_used_as_session_id(
    api: AsyncClient,
):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id)

    assert len(body["chatId"]) == 36
    assert body["sessionId"] == body["chatId"]


async def test_prediction_create_uses_given_chat_id_as_session_id(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id, chatId="chat-1")

    assert body["chatId"] == "chat-1"
    assert body["sessionId"] == "chat-1"


async def test_prediction_create_takes_session_id_from_override_config(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id, overrideConfig={"sessionId": "session-7"})

    assert body["sessionId"] == "session-7"
    assert body["chatId"] == "session-7"


async def test_prediction_create_keeps_chat_id_and_override_session_apart(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id, chatId="chat-1", overrideConfig={"sessionId": "s-1"})

    assert body["chatId"] == "chat-1"
    assert body["sessionId"] == "s-1"


async def test_prediction_create_records_a_succeeded_prediction(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id, chatId="chat-1")

    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.SUCCEEDED
    assert prediction.chat_id == "chat-1"
    assert prediction.streaming is False
    assert prediction.result == body
    assert prediction.finished_at is not None


async def test_prediction_create_writes_user_then_api_message(api: AsyncClient):
    chatflow = await acreate_chatflow()

    body = await _predict(api, chatflow.id, question="what is a queue?")

    messages = [m async for m in ChatMessage.objects.order_by("created_at")]
    assert [(m.role, m.content) for m in messages] == [
        ("userMessage", "what is a queue?"),
        ("apiMessage", body["text"]),
    ]
    assert str(messages[1].id) == body["chatMessageId"]
    assert {m.chat_id for m in messages} == {body["chatId"]}
    assert {m.memory_type for m in messages} == {"Buffer Memory"}


async def test_prediction_create_accepts_history_items_in_both_shapes(api: AsyncClient):
    chatflow = await acreate_chatflow()
    history = [
        {"role": "userMessage", "content": "first"},
        {"type": "apiMessage", "message": "second"},
    ]

    body = await _predict(api, chatflow.id, history=history)

    assert "I remember 2 earlier messages" in body["text"]


async def test_prediction_create_accepts_multipart_form_data(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await api.post(
        prediction_url(chatflow.id),
        {"question": "hi", "chatId": "chat-1", "overrideConfig": '{"sessionId": "s-1"}'},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["question"] == "hi"
    assert body["sessionId"] == "s-1"


async def test_prediction_create_past_prediction_timeout_is_504(api: AsyncClient, settings):
    settings.PREDICTION_TIMEOUT = 0.2
    settings.PREDICTION_TIMEOUT_MARGIN = 0.2
    chatflow = await acreate_chatflow(flow_data=offline_flow(tokens=100, delay_ms=20))

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 504
    assert error_of(response)["code"] == "prediction_timeout"
    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.FAILED
    assert prediction.error_code == "prediction_timeout"
    assert await ChatMessage.objects.acount() == 0


# --- memory -------------------------------------------------------------------------------------


async def test_prediction_create_remembers_earlier_messages_of_the_chat(api: AsyncClient):
    chatflow = await acreate_chatflow()
    first = await _predict(api, chatflow.id, chatId="chat-1", question="my name is Ada")

    second = await _predict(api, chatflow.id, chatId="chat-1", question="who am I?")

    assert "I remember no earlier messages" in first["text"]
    assert "I remember 2 earlier messages" in second["text"]


async def test_prediction_create_memory_follows_the_session_id(api: AsyncClient):
    chatflow = await acreate_chatflow()
    shared = {"sessionId": "session-1"}
    await _predict(api, chatflow.id, chatId="chat-1", overrideConfig=shared)

    other_chat = await _predict(api, chatflow.id, chatId="chat-2", overrideConfig=shared)

    assert "I remember 2 earlier messages" in other_chat["text"]


async def test_prediction_create_does_not_share_memory_between_chats(api: AsyncClient):
    chatflow = await acreate_chatflow()
    await _predict(api, chatflow.id, chatId="chat-1", question="my name is Ada")

    other = await _predict(api, chatflow.id, chatId="chat-2", question="who am I?")

    assert "I remember no earlier messages" in other["text"]


# --- errors: nothing stored ---------------------------------------------------------------------


async def _refused(api: AsyncClient, url: str, body, status: int, code: str | None = None, **h):
    before = await Prediction.objects.acount()
    response = await post_json(api, url, body, **h)
    assert response.status_code == status, response.content
    error = error_of(response)
    if code is not None:
        assert error["code"] == code
    assert await Prediction.objects.acount() == before
    assert await ChatMessage.objects.acount() == 0
    return error


async def test_prediction_create_unknown_chatflow_is_404(api: AsyncClient):
    error = await _refused(
        api, prediction_url(UNKNOWN_ID), {"question": "hi"}, 404, "chatflow_not_found"
    )

    assert error["message"] == f"Chatflow {UNKNOWN_ID} not found"


async def test_prediction_create_non_uuid_chatflow_id_is_404(api: AsyncClient):
    await _refused(api, prediction_url("not-a-uuid"), {"question": "hi"}, 404, "chatflow_not_found")


async def test_prediction_create_malformed_json_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    await _refused(api, prediction_url(chatflow.id), '{"question": ', 400, "malformed_json")


async def test_prediction_create_empty_body_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    await _refused(api, prediction_url(chatflow.id), "", 400, "malformed_json")


async def test_prediction_create_json_array_body_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    await _refused(api, prediction_url(chatflow.id), [{"question": "hi"}], 400)


async def test_prediction_create_missing_question_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    error = await _refused(api, prediction_url(chatflow.id), {"streaming": False}, 400)

    assert error["code"] == "invalid_request"
    assert 'question is required: send {"question": "..."}' in error["message"]


@pytest.mark.parametrize("question", [5, ["hi"], {"text": "hi"}, None, True])
async def test_prediction_create_question_not_a_string_is_400(api: AsyncClient, question):
    chatflow = await acreate_chatflow()

    error = await _refused(api, prediction_url(chatflow.id), {"question": question}, 400)

    assert "question" in error["message"]


async def test_prediction_create_empty_question_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    error = await _refused(api, prediction_url(chatflow.id), {"question": ""}, 400)

    assert "question must not be empty" in error["message"]


async def test_prediction_create_question_over_limit_is_413(api: AsyncClient, settings):
    settings.MAX_QUESTION_LENGTH = 10
    chatflow = await acreate_chatflow()

    error = await _refused(
        api, prediction_url(chatflow.id), {"question": "x" * 11}, 413, "question_too_long"
    )

    assert "MAX_QUESTION_LENGTH=10" in error["message"]


async def test_prediction_create_question_at_limit_is_accepted(api: AsyncClient, settings):
    settings.MAX_QUESTION_LENGTH = 10
    chatflow = await acreate_chatflow()

    await _predict(api, chatflow.id, question="x" * 10)


async def test_prediction_create_body_over_limit_is_413(api: AsyncClient, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1024
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    chatflow = await acreate_chatflow()

    await _refused(
        api, prediction_url(chatflow.id), {"question": "x" * 2000}, 413, "body_too_large"
    )


async def test_prediction_create_history_over_limit_is_413(api: AsyncClient, settings):
    settings.MAX_HISTORY_MESSAGES = 1
    chatflow = await acreate_chatflow()
    history = [{"role": "userMessage", "content": "a"}, {"role": "apiMessage", "content": "b"}]

    await _refused(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "history": history},
        413,
        "history_too_long",
    )


@pytest.mark.parametrize(
    "history",
    [
        "not a list",
        [{"content": "no role"}],
        [{"role": "userMessage"}],
        [{"role": "system", "content": "not a Flowise role"}],
        ["just text"],
    ],
)
async def test_prediction_create_malformed_history_is_400(api: AsyncClient, history):
    chatflow = await acreate_chatflow()

    error = await _refused(
        api, prediction_url(chatflow.id), {"question": "hi", "history": history}, 400
    )

    assert "history" in error["message"]


async def test_prediction_create_override_config_not_an_object_is_400(api: AsyncClient):
    chatflow = await acreate_chatflow()

    await _refused(api, prediction_url(chatflow.id), {"question": "hi", "overrideConfig": "x"}, 400)


async def test_prediction_create_uploads_are_refused(api: AsyncClient):
    chatflow = await acreate_chatflow()
    upload = {"data": "data:text/plain;base64,aGk=", "type": "file", "name": "a", "mime": "x"}

    await _refused(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "uploads": [upload]},
        400,
        "uploads_not_supported",
    )


async def test_prediction_create_get_is_405(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await api.get(prediction_url(chatflow.id))

    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert response["Allow"] == "POST"


# --- API keys -----------------------------------------------------------------------------------


async def _keyed_chatflow():
    key, raw = await acreate_apikey(name="flow key")
    chatflow = await acreate_chatflow(api_key=key)
    return chatflow, raw


async def test_prediction_create_with_api_key_refuses_missing_key(api: AsyncClient):
    chatflow, _ = await _keyed_chatflow()

    await _refused(api, prediction_url(chatflow.id), {"question": "hi"}, 401, "api_key_required")


async def test_prediction_create_with_api_key_refuses_wrong_key(api: AsyncClient):
    chatflow, _ = await _keyed_chatflow()

    await _refused(
        api,
        prediction_url(chatflow.id),
        {"question": "hi"},
        401,
        "invalid_api_key",
        Authorization="Bearer fs_wrong",
    )


async def test_prediction_create_with_api_key_refuses_another_chatflow_key(api: AsyncClient):
    chatflow, _ = await _keyed_chatflow()
    _, other_raw = await acreate_apikey(name="other flow key")

    await _refused(
        api,
        prediction_url(chatflow.id),
        {"question": "hi"},
        401,
        "invalid_api_key",
        Authorization=f"Bearer {other_raw}",
    )


async def test_prediction_create_with_api_key_accepts_its_key(api: AsyncClient):
    chatflow, raw = await _keyed_chatflow()

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Authorization=f"Bearer {raw}"
    )

    assert response.status_code == 200


async def test_prediction_create_with_api_key_accepts_management_key(api: AsyncClient):
    chatflow, _ = await _keyed_chatflow()
    _, manage_raw = await acreate_apikey(name="admin key", can_manage=True)

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Authorization=f"Bearer {manage_raw}"
    )

    assert response.status_code == 200


async def test_prediction_create_with_api_key_accepts_staff_session(api: AsyncClient, staff_user):
    chatflow, _ = await _keyed_chatflow()
    await api.aforce_login(staff_user)

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 200


async def test_prediction_create_with_api_key_refuses_non_staff_session(
    api: AsyncClient, django_user_model
):
    chatflow, _ = await _keyed_chatflow()
    user = await django_user_model.objects.acreate(username="someone")
    await api.aforce_login(user)

    await _refused(api, prediction_url(chatflow.id), {"question": "hi"}, 401, "api_key_required")


# --- prediction detail --------------------------------------------------------------------------


async def test_prediction_detail_shows_status_and_result(api: AsyncClient):
    chatflow = await acreate_chatflow()
    body = await _predict(api, chatflow.id)
    prediction = await Prediction.objects.aget()

    response = await api.get(f"/api/v1/predictions/{prediction.id}")

    detail = response.json()
    assert detail["status"] == "succeeded"
    assert detail["result"] == body
    assert detail["error"] is None


async def test_prediction_detail_unknown_is_404(api: AsyncClient):
    response = await api.get(f"/api/v1/predictions/{UNKNOWN_ID}")

    assert response.status_code == 404
    assert error_of(response)["code"] == "prediction_not_found"
