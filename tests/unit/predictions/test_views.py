"""The chat's pages: the start page, the chat page and the history JSON, with the chat's rules."""

from __future__ import annotations

import json

import pytest

from predictions import services
from predictions.models import ChatMessage
from tests.conftest import offline_flow

CHAT_ID = "3d6f9a10-0000-4000-8000-0000000000aa"


@pytest.fixture
def flows(make_chatflow):
    key, _raw = services.apikey_create(name="k")
    return {
        "public": make_chatflow(name="Public", is_public=True),
        "deployed": make_chatflow(name="Deployed", deployed=True),
        "private": make_chatflow(name="Private"),
        "keyed": make_chatflow(name="Keyed", is_public=True, api_key=key),
    }


def listed(response) -> set[str]:
    return {flow["name"] for flow in response.context["chatflows"]}


def test_index_lists_public_and_deployed_chatflows_without_a_key_to_anonymous_visitors(
    client, flows
):
    response = client.get("/")

    assert response.status_code == 200
    assert listed(response) == {"Public", "Deployed"}
    assert f'href="/chat/{flows["public"].id}/"' in response.content.decode()


def test_index_lists_every_chatflow_to_staff(client, flows, staff_user):
    client.force_login(staff_user)

    assert listed(client.get("/")) == {"Public", "Deployed", "Private", "Keyed"}


def test_chat_page_carries_title_welcome_message_and_socket_path(client, make_chatflow):
    chatflow = make_chatflow(
        name="n",
        is_public=True,
        chatbot_config={"title": "Helper </script>", "welcomeMessage": "Hello!"},
    )

    response = client.get(f"/chat/{chatflow.id}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Helper &lt;/script&gt;" in html
    start = html.index('<script id="chat-config" type="application/json">') + len(
        '<script id="chat-config" type="application/json">'
    )
    config = json.loads(html[start : html.index("</script>", start)])
    assert config["welcomeMessage"] == "Hello!"
    assert config["wsPath"] == f"/ws/chat/{chatflow.id}/"
    assert config["historyUrl"] == f"/chat/{chatflow.id}/history"


@pytest.mark.parametrize("name", ["private", "keyed"])
def test_chat_page_asks_anonymous_visitors_to_log_in_for_a_non_public_chatflow(client, flows, name):
    response = client.get(f"/chat/{flows[name].id}/")

    assert response.status_code == 401
    assert "/admin/login/?next=" in response.content.decode()


def test_chat_page_of_a_private_chatflow_opens_for_staff(client, flows, staff_user):
    client.force_login(staff_user)

    assert client.get(f"/chat/{flows['keyed'].id}/").status_code == 200


def test_chat_page_of_an_unknown_chatflow_is_404(client, db):
    assert client.get("/chat/not-a-flow/").status_code == 404


def _messages(chatflow, chat_id: str) -> None:
    for role, content in (("userMessage", "hi <b>"), ("apiMessage", "hello")):
        ChatMessage.objects.create(
            chatflow=chatflow, chat_id=chat_id, session_id=chat_id, role=role, content=content
        )


def test_history_returns_the_conversation_of_one_chat_id(client, flows):
    _messages(flows["public"], CHAT_ID)
    _messages(flows["public"], "5c2b1f00-0000-4000-8000-0000000000bb")

    response = client.get(f"/chat/{flows['public'].id}/history", {"chatId": CHAT_ID})

    assert response.status_code == 200
    body = response.json()
    assert body["chatId"] == CHAT_ID
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("userMessage", "hi <b>"),
        ("apiMessage", "hello"),
    ]


def test_history_applies_the_chat_access_rules(client, flows, staff_user):
    _messages(flows["private"], CHAT_ID)
    url = f"/chat/{flows['private'].id}/history"

    refused = client.get(url, {"chatId": CHAT_ID})
    client.force_login(staff_user)
    allowed = client.get(url, {"chatId": CHAT_ID})

    assert refused.status_code == 401
    assert refused.json()["code"] == "login_required"
    assert allowed.status_code == 200
    assert len(allowed.json()["messages"]) == 2


def test_history_refuses_a_chat_id_that_is_not_a_uuid(client, flows):
    response = client.get(f"/chat/{flows['public'].id}/history", {"chatId": "user-1"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_chat_id"


def test_chat_script_and_styles_are_served_without_a_static_files_server(client, db):
    script = client.get("/static/predictions/chat.js")
    styles = client.get("/static/predictions/chat.css")

    assert script.status_code == 200
    assert styles.status_code == 200
    assert b"textContent" in b"".join(script.streaming_content)


def test_chat_page_is_not_for_posting(client, make_chatflow):
    chatflow = make_chatflow(is_public=True, flow_data=offline_flow(tokens=1))

    assert client.post(f"/chat/{chatflow.id}/").status_code == 405
