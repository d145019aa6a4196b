"""GET /api/v1/chatmessage/<chatflow_id>: chat history, management auth, filters and shape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from predictions import services
from predictions.models import ChatMessage

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def url(chatflow_id: object) -> str:
    return f"/api/v1/chatmessage/{chatflow_id}"


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def chatflow(make_chatflow):
    return make_chatflow()


def _message(chatflow, content: str, *, hour: int, chat: str = "chat-1", session: str = ""):
    role = "userMessage" if hour % 2 == 0 else "apiMessage"
    return ChatMessage.objects.create(
        chatflow=chatflow,
        chat_id=chat,
        session_id=session or chat,
        role=role,
        content=content,
        memory_type="Buffer Memory",
        created_at=T0.replace(hour=hour),
    )


@pytest.fixture
def history(chatflow):
    return [
        _message(chatflow, "q1", hour=0),
        _message(chatflow, "a1", hour=1),
        _message(chatflow, "q2", hour=2, chat="chat-2", session="session-b"),
        _message(chatflow, "a2", hour=3, chat="chat-2", session="session-b"),
    ]


def _contents(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [m["content"] for m in response.json()]


def test_chatmessage_list_refuses_anonymous(client, history):
    response = client.get(url(history[0].chatflow_id))

    assert response.status_code in (401, 403)
    assert response.json()["success"] is False


def test_chatmessage_list_refuses_chatflow_key(client, history):
    _, raw = services.apikey_create(name="flow key")

    response = client.get(url(history[0].chatflow_id), headers={"Authorization": f"Bearer {raw}"})

    assert response.status_code == 401


def test_chatmessage_list_accepts_management_key(client, history):
    _, raw = services.apikey_create(name="admin key", can_manage=True)

    response = client.get(url(history[0].chatflow_id), headers={"Authorization": f"Bearer {raw}"})

    assert _contents(response) == ["q1", "a1", "q2", "a2"]


def test_chatmessage_list_returns_flowise_message_shape(staff_client, chatflow, history):
    response = staff_client.get(url(chatflow.id))

    first = response.json()[0]
    assert first == {
        "id": str(history[0].id),
        "role": "userMessage",
        "chatflowid": str(chatflow.id),
        "content": "q1",
        "chatId": "chat-1",
        "sessionId": "chat-1",
        "memoryType": "Buffer Memory",
        "sourceDocuments": None,
        "usedTools": None,
        "createdDate": "2025-01-01T00:00:00+00:00",
    }


def test_chatmessage_list_is_oldest_first_by_default(staff_client, chatflow, history):
    assert _contents(staff_client.get(url(chatflow.id))) == ["q1", "a1", "q2", "a2"]


def test_chatmessage_list_order_desc_is_newest_first(staff_client, chatflow, history):
    response = staff_client.get(url(chatflow.id), {"order": "DESC"})

    assert _contents(response) == ["a2", "q2", "a1", "q1"]


def test_chatmessage_list_filters_by_chat_id(staff_client, chatflow, history):
    response = staff_client.get(url(chatflow.id), {"chatId": "chat-2"})

    assert _contents(response) == ["q2", "a2"]


def test_chatmessage_list_filters_by_session_id(staff_client, chatflow, history):
    response = staff_client.get(url(chatflow.id), {"sessionId": "chat-1"})

    assert _contents(response) == ["q1", "a1"]


def test_chatmessage_list_filters_by_date_range(staff_client, chatflow, history):
    response = staff_client.get(
        url(chatflow.id),
        {"startDate": "2025-01-01T01:00:00Z", "endDate": "2025-01-01T02:00:00Z"},
    )

    assert _contents(response) == ["a1", "q2"]


def test_chatmessage_list_leaves_out_other_chatflows(
    staff_client, chatflow, history, make_chatflow
):
    _message(make_chatflow(name="other"), "elsewhere", hour=5)

    assert "elsewhere" not in _contents(staff_client.get(url(chatflow.id)))


def test_chatmessage_list_bad_order_is_400(staff_client, chatflow):
    response = staff_client.get(url(chatflow.id), {"order": "SIDEWAYS"})

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


def test_chatmessage_list_unknown_chatflow_is_404(staff_client):
    response = staff_client.get(url("00000000-0000-4000-8000-000000000000"))

    assert response.status_code == 404
    assert response.json()["code"] == "chatflow_not_found"
