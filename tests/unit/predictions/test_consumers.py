"""The chat WebSocket in main mode: ask, stream, stop, resume, refuse, and stay usable."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, Client

from flowsite.asgi import application
from predictions import consumers, services
from predictions.events import reset_transport
from predictions.models import ChatMessage, Prediction, PredictionStatus
from tests.conftest import offline_flow
from tests.unit.helpers import (
    acreate_apikey,
    acreate_chatflow,
    openai_conversation_flow,
    parse_frames,
    read_stream,
)
from tests.websocket import TIMEOUT, chat_socket, events_of, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

CHAT_ID = "6f1c2d3e-0000-4000-8000-00000000c0de"


async def public_flow(**flow: Any):
    return await acreate_chatflow(is_public=True, flow_data=offline_flow(**flow))


async def staff_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    await sync_to_async(client.force_login)(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def test_consumer_question_answers_with_prediction_events_and_done():
    chatflow = await public_flow(tokens=5)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    prediction = await Prediction.objects.aget()
    assert frames[0] == {
        "type": "prediction",
        "predictionId": str(prediction.id),
        "chatId": CHAT_ID,
        "question": "hi",
        "streaming": True,
        "status": "queued",
    }
    events = events_of(frames)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"] for e in events] == ["start"] + ["token"] * 5 + ["metadata", "end"]
    assert "".join(e["data"] for e in events if e["event"] == "token") == (
        "tok0 tok1 tok2 tok3 tok4 "
    )
    assert all(f["predictionId"] == str(prediction.id) for f in frames[1:])
    assert frames[-1] == {
        "type": "done",
        "predictionId": str(prediction.id),
        "status": "succeeded",
        "text": "tok0 tok1 tok2 tok3 tok4 ",
    }
    assert prediction.chat_id == CHAT_ID
    assert await ChatMessage.objects.filter(chat_id=CHAT_ID).acount() == 2


async def test_consumer_events_have_the_names_and_payloads_of_the_sse_stream():
    chatflow = await public_flow(tokens=3)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    prediction_id = frames[0]["predictionId"]
    response = await AsyncClient().get(f"/api/v1/predictions/{prediction_id}/events")
    assert events_of(frames) == parse_frames(await read_stream(response))


async def test_consumer_stop_cancels_the_running_prediction():
    chatflow = await public_flow(tokens=200, delay_ms=20)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        await receive_until(ws, "event", event="token")
        await ws.send_json_to({"type": "stop"})
        frames = await receive_until(ws)

    names = [e["event"] for e in events_of(frames)]
    assert names[-2:] == ["abort", "end"]
    assert names.count("token") < 199
    assert frames[-1]["status"] == "cancelled"
    prediction = await Prediction.objects.aget()
    assert prediction.status == PredictionStatus.CANCELLED
    assert await ChatMessage.objects.acount() == 0


async def test_consumer_resume_sends_exactly_the_missed_events():
    chatflow = await public_flow(tokens=30, delay_ms=10)

    async with chat_socket(chatflow.id) as first:
        await first.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        seen = events_of(await receive_until(first, "event", event="token"))
        seen += events_of([await first.receive_json_from(timeout=TIMEOUT)])
    prediction_id = str((await Prediction.objects.aget()).id)
    last = seen[-1]["seq"]

    async with chat_socket(chatflow.id) as second:
        await second.send_json_to(
            {"type": "resume", "predictionId": prediction_id, "afterSeq": last}
        )
        frames = await receive_until(second)

    assert frames[0]["type"] == "prediction"
    assert frames[0]["predictionId"] == prediction_id
    rest = events_of(frames)
    every = seen + rest
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    text = "".join(e["data"] for e in every if e["event"] == "token")
    assert text == "".join(f"tok{i} " for i in range(30))
    assert frames[-1]["text"] == text


async def test_consumer_resume_after_restart_answers_a_finished_prediction_from_the_database():
    chatflow = await public_flow(tokens=4)
    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        await receive_until(ws)
    prediction = await Prediction.objects.aget()
    reset_transport()  # a new web process: the in-process event log is gone

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "resume", "predictionId": str(prediction.id), "afterSeq": 0})
        frames = await receive_until(ws)

    events = events_of(frames)
    assert [e["event"] for e in events] == ["start", "token", "metadata", "end"]
    assert events[1]["data"] == "tok0 tok1 tok2 tok3 "
    assert frames[-1]["status"] == "succeeded"
    assert frames[-1]["text"] == "tok0 tok1 tok2 tok3 "


async def test_consumer_resume_after_restart_reports_a_lost_unfinished_prediction():
    chatflow = await public_flow()
    prediction = await sync_to_async(services.prediction_create)(
        chatflow=chatflow,
        request=services.PredictionRequest(
            question="hi",
            chat_id=CHAT_ID,
            session_id=CHAT_ID,
            streaming=True,
            override_config={},
            history=[],
        ),
    )
    await Prediction.objects.filter(id=prediction.id).aupdate(status=PredictionStatus.RUNNING)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "resume", "predictionId": str(prediction.id), "afterSeq": 0})
        frames = await receive_until(ws)

    assert [e["event"] for e in events_of(frames)] == ["error", "end"]
    assert frames[-1]["error"]["code"] == "events_unavailable"
    assert frames[-1]["error"]["hint"]


async def test_consumer_malformed_messages_get_error_frames_and_the_socket_stays_usable():
    chatflow = await public_flow(tokens=2)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_to(text_data="this is not json")
        malformed = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_to(text_data="[1, 2]")
        not_object = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "explode"})
        unknown = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_to(bytes_data=b"\x00\x01")
        binary = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "question", "question": 42, "chatId": CHAT_ID})
        not_text = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": "chat-1"})
        bad_chat_id = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "predictionId": "x", "afterSeq": -1})
        bad_seq = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert malformed["type"] == "error"
    assert malformed["code"] == "malformed_json"
    assert not_object["code"] == "invalid_message"
    assert unknown["code"] == "invalid_message"
    assert "question, stop, resume" in unknown["message"]
    assert binary["code"] == "invalid_message"
    assert not_text["code"] == "invalid_request"
    assert bad_chat_id["code"] == "invalid_chat_id"
    assert bad_seq["code"] == "invalid_request"
    assert frames[-1]["status"] == "succeeded"
    assert await Prediction.objects.acount() == 1


async def test_consumer_refuses_oversize_questions_and_frames_and_stays_usable(settings):
    settings.MAX_QUESTION_LENGTH = 10
    chatflow = await public_flow(tokens=2)

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "x" * 11, "chatId": CHAT_ID})
        too_long = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_to(text_data=" " * (consumers.max_frame_chars() + 1))
        too_big = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "question", "question": "x" * 10, "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert too_long["type"] == "error"
    assert too_long["code"] == "question_too_long"
    assert "MAX_QUESTION_LENGTH=10" in too_long["message"]
    assert too_big["code"] == "message_too_large"
    assert frames[-1]["status"] == "succeeded"
    assert await Prediction.objects.acount() == 1


async def test_consumer_ping_is_answered_with_pong():
    chatflow = await public_flow()

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(timeout=TIMEOUT) == {"type": "pong"}


async def test_consumer_stop_without_a_prediction_is_an_error_frame():
    chatflow = await public_flow()

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "stop"})
        frame = await ws.receive_json_from(timeout=TIMEOUT)

    assert frame["code"] == "no_prediction"


async def test_consumer_resume_refuses_a_prediction_of_another_chatflow():
    chatflow = await public_flow(tokens=1)
    other = await public_flow(tokens=1)
    async with chat_socket(other.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        other_prediction_id = (await receive_until(ws))[0]["predictionId"]

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to(
            {"type": "resume", "predictionId": other_prediction_id, "afterSeq": 0}
        )
        foreign = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "predictionId": "not-a-uuid", "afterSeq": 0})
        unknown = await ws.receive_json_from(timeout=TIMEOUT)

    assert foreign["code"] == "prediction_not_found"
    assert unknown["code"] == "prediction_not_found"


async def test_consumer_non_streaming_chatflow_answer_comes_in_the_done_frame(openai_stub):
    chatflow = await acreate_chatflow(
        is_public=True,
        flow_data=openai_conversation_flow(openai_stub.base_url, streaming=False),
    )

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert frames[0]["streaming"] is False
    assert [e["event"] for e in events_of(frames)] == ["start", "metadata", "end"]
    assert frames[-1]["status"] == "succeeded"
    assert frames[-1]["text"] == "Hello from the stub."


async def test_consumer_failed_answer_says_what_to_do(refused_base_url):
    chatflow = await acreate_chatflow(
        is_public=True, flow_data=openai_conversation_flow(refused_base_url)
    )

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert [e["event"] for e in events_of(frames)] == ["start", "error", "end"]
    done = frames[-1]
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_unreachable"
    assert done["error"]["hint"].startswith(
        "The model server is unreachable: check the chatflow's base URL"
    )


# --- who may connect ---------------------------------------------------------------------------


async def refusal(chatflow_id: object, *headers: tuple[bytes, bytes]) -> tuple[dict, int]:
    """Connect and return the error frame and close code the server answers with."""
    async with chat_socket(chatflow_id, *headers) as ws:
        frame = await ws.receive_json_from(timeout=TIMEOUT)
        closed = await ws.receive_output(timeout=TIMEOUT)
    assert closed["type"] == "websocket.close"
    return frame, closed["code"]


async def test_consumer_refuses_a_chatflow_that_is_not_public_with_4401():
    chatflow = await acreate_chatflow(is_public=False, deployed=False)

    frame, code = await refusal(chatflow.id)

    assert code == consumers.CLOSE_LOGIN_REQUIRED == 4401
    assert frame["type"] == "error"
    assert frame["code"] == "login_required"


async def test_consumer_refuses_a_public_chatflow_with_an_api_key_with_4401():
    key, _raw = await acreate_apikey()
    chatflow = await acreate_chatflow(is_public=True, api_key=key)

    _frame, code = await refusal(chatflow.id)

    assert code == 4401


async def test_consumer_deployed_chatflow_without_key_is_open_to_anonymous_users():
    chatflow = await acreate_chatflow(deployed=True, flow_data=offline_flow(tokens=1))

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert frames[-1]["status"] == "succeeded"


async def test_consumer_refuses_a_logged_in_non_staff_user_with_4403(django_user_model):
    user = await sync_to_async(django_user_model.objects.create_user)("someone", password="pw")
    chatflow = await acreate_chatflow(is_public=False)

    frame, code = await refusal(chatflow.id, await staff_cookie(user))

    assert code == consumers.CLOSE_FORBIDDEN == 4403
    assert frame["code"] == "staff_only"


async def test_consumer_lets_a_staff_session_use_a_private_chatflow_with_a_key(staff_user):
    key, _raw = await acreate_apikey()
    chatflow = await acreate_chatflow(
        is_public=False, api_key=key, flow_data=offline_flow(tokens=2)
    )

    async with chat_socket(chatflow.id, await staff_cookie(staff_user)) as ws:
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frames = await receive_until(ws)

    assert frames[-1]["status"] == "succeeded"


async def test_consumer_closes_when_the_chatflow_stops_being_public_mid_connection():
    chatflow = await public_flow(tokens=1)

    async with chat_socket(chatflow.id) as ws:
        await sync_to_async(services.chatflow_update)(chatflow=chatflow, is_public=False)
        await ws.send_json_to({"type": "question", "question": "hi", "chatId": CHAT_ID})
        frame = await ws.receive_json_from(timeout=TIMEOUT)
        closed = await ws.receive_output(timeout=TIMEOUT)

    assert frame["code"] == "login_required"
    assert closed == {"type": "websocket.close", "code": 4401}
    assert await Prediction.objects.acount() == 0


async def test_consumer_unknown_chatflow_closes_with_4404():
    frame, code = await refusal("8a1e2f64-0000-4000-8000-000000000000")

    assert code == consumers.CLOSE_NOT_FOUND == 4404
    assert frame["code"] == "chatflow_not_found"


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"https://localhost.evil.example", None],
    ids=["foreign", "lookalike", "missing"],
)
async def test_websocket_origin_outside_allowed_hosts_is_rejected(origin):
    chatflow = await public_flow()
    headers = [(b"origin", origin)] if origin else []
    communicator = WebsocketCommunicator(application, f"/ws/chat/{chatflow.id}/", headers=headers)
    try:
        connected, _ = await communicator.connect(timeout=TIMEOUT)
    finally:
        await communicator.disconnect()

    assert connected is False


async def test_websocket_origin_of_an_allowed_host_with_a_port_is_accepted():
    chatflow = await public_flow()
    communicator = WebsocketCommunicator(
        application,
        f"/ws/chat/{chatflow.id}/",
        headers=[(b"origin", b"http://127.0.0.1:3000")],
    )
    try:
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        await communicator.send_json_to({"type": "ping"})
        pong = await communicator.receive_json_from(timeout=TIMEOUT)
    finally:
        await communicator.disconnect()

    assert connected is True
    assert pong == {"type": "pong"}


def test_error_frame_is_type_code_message_and_a_hint_when_one_is_known():
    from predictions.exceptions import BadRequest, QueueUnavailable

    plain = consumers.error_frame(BadRequest("nope", code="invalid_message"))
    queue = consumers.error_frame(QueueUnavailable("The queue is unavailable"))

    assert plain == {"type": "error", "code": "invalid_message", "message": "nope"}
    assert queue["code"] == "queue_unavailable"
    assert queue["hint"] == "The queue is unavailable right now: ask again in a few seconds."


async def test_consumer_counts_questions_against_the_chatflows_rate_limit():
    chatflow = await acreate_chatflow(
        is_public=True,
        flow_data=offline_flow(tokens=1),
        api_config={
            "rateLimit": {
                "status": True,
                "limitMax": 1,
                "limitDuration": 60,
                "limitMsg": "Slow down",
            }
        },
    )

    async with chat_socket(chatflow.id) as ws:
        await ws.send_json_to({"type": "question", "question": "one", "chatId": CHAT_ID})
        await receive_until(ws)
        await ws.send_json_to({"type": "question", "question": "two", "chatId": CHAT_ID})
        refused = await ws.receive_json_from(timeout=TIMEOUT)
        await ws.send_json_to({"type": "ping"})
        pong = await ws.receive_json_from(timeout=TIMEOUT)

    assert refused["type"] == "error"
    assert refused["code"] == "rate_limited"
    assert refused["message"] == "Slow down"
    assert pong == {"type": "pong"}  # the socket stays usable
    assert await Prediction.objects.acount() == 1
