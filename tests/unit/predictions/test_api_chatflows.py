"""Management API for chatflows (staff session or management key), and its public endpoints."""

from __future__ import annotations

import json

import pytest

from predictions import services
from predictions.models import Chatflow
from tests.conftest import offline_flow
from tests.unit.engine.flows import conversation, edge, flow_json, node, offline
from tests.unit.helpers import error_of, openai_conversation_flow

pytestmark = pytest.mark.django_db

LIST = "/api/v1/chatflows"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def detail(chatflow_id: object) -> str:
    return f"/api/v1/chatflows/{chatflow_id}"


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def chatflow(make_chatflow):
    return make_chatflow(name="existing", chatbot_config={"title": "Hello"})


def _new(**fields):
    body = {"name": "new flow", "flowData": offline_flow()}
    body.update(fields)
    return body


# --- who may manage -----------------------------------------------------------------------------


def _assert_refused(response) -> None:
    assert response.status_code in (401, 403), response.content
    assert error_of(response)["code"] in ("unauthorized", "forbidden")


def test_chatflow_list_refuses_anonymous(client, chatflow):
    _assert_refused(client.get(LIST))


def test_chatflow_list_refuses_anonymous_with_401(client, chatflow):
    response = client.get(LIST)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_chatflow_create_refuses_anonymous(client):
    response = client.post(LIST, _new(), content_type="application/json")

    _assert_refused(response)
    assert Chatflow.objects.count() == 0


def test_chatflow_detail_refuses_anonymous(client, chatflow):
    _assert_refused(client.get(detail(chatflow.id)))


def test_chatflow_update_refuses_anonymous(client, chatflow):
    response = client.put(detail(chatflow.id), {"name": "x"}, content_type="application/json")

    _assert_refused(response)
    chatflow.refresh_from_db()
    assert chatflow.name == "existing"


def test_chatflow_delete_refuses_anonymous(client, chatflow):
    _assert_refused(client.delete(detail(chatflow.id)))
    assert Chatflow.objects.filter(id=chatflow.id).exists()


def test_chatflow_list_refuses_non_staff_user(client, django_user_model, chatflow):
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))

    response = client.get(LIST)

    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"


def test_chatflow_list_refuses_chatflow_key_without_manage(client, chatflow):
    _, raw = services.apikey_create(name="flow key", can_manage=False)

    response = client.get(LIST, headers=bearer(raw))

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_chatflow_list_refuses_unknown_key(client, chatflow):
    response = client.get(LIST, headers=bearer("fs_not_a_key"))

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_chatflow_list_accepts_management_key(client, chatflow):
    _, raw = services.apikey_create(name="admin key", can_manage=True)

    response = client.get(LIST, headers=bearer(raw))

    assert response.status_code == 200
    assert [c["id"] for c in response.json()] == [str(chatflow.id)]


def test_chatflow_create_accepts_management_key(client):
    _, raw = services.apikey_create(name="admin key", can_manage=True)

    response = client.post(LIST, _new(), content_type="application/json", headers=bearer(raw))

    assert response.status_code == 200
    assert Chatflow.objects.get().name == "new flow"


# --- CRUD as staff ------------------------------------------------------------------------------


def test_chatflow_list_returns_flowise_shaped_chatflows(staff_client, chatflow):
    response = staff_client.get(LIST)

    assert response.status_code == 200
    [item] = response.json()
    assert {
        "id",
        "name",
        "flowData",
        "deployed",
        "isPublic",
        "apikeyid",
        "chatbotConfig",
        "apiConfig",
        "createdDate",
        "updatedDate",
    } <= set(item)
    assert item["id"] == str(chatflow.id)
    assert item["name"] == "existing"


def test_chatflow_create_stores_flow_data_and_returns_it_as_a_string(staff_client):
    flow_data = offline_flow()

    response = staff_client.post(LIST, _new(flowData=flow_data), content_type="application/json")

    assert response.status_code == 200
    body = response.json()
    assert body["flowData"] == flow_data
    stored = Chatflow.objects.get(id=body["id"])
    assert stored.flow_data == flow_data
    assert body["isStreaming"] is True


def test_chatflow_create_accepts_flow_data_as_an_object(staff_client):
    flow_object = json.loads(offline_flow())

    response = staff_client.post(LIST, _new(flowData=flow_object), content_type="application/json")

    assert response.status_code == 200
    flow_data = response.json()["flowData"]
    assert isinstance(flow_data, str)
    assert json.loads(flow_data) == flow_object


def test_chatflow_create_returns_configs_as_json_strings(staff_client):
    response = staff_client.post(
        LIST,
        _new(chatbotConfig={"title": "Hi"}, apiConfig=json.dumps({"overrideConfig": {}})),
        content_type="application/json",
    )

    body = response.json()
    assert json.loads(body["chatbotConfig"]) == {"title": "Hi"}
    assert json.loads(body["apiConfig"]) == {"overrideConfig": {}}


def test_chatflow_create_without_name_is_400(staff_client):
    response = staff_client.post(
        LIST, {"flowData": offline_flow()}, content_type="application/json"
    )

    assert response.status_code == 400
    assert "name" in error_of(response)["message"]
    assert Chatflow.objects.count() == 0


def test_chatflow_create_malformed_json_is_400(staff_client):
    response = staff_client.post(LIST, '{"name": ', content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


def test_chatflow_detail_returns_the_chatflow(staff_client, chatflow):
    response = staff_client.get(detail(chatflow.id))

    assert response.status_code == 200
    assert response.json()["flowData"] == chatflow.flow_data


@pytest.mark.parametrize("chatflow_id", [UNKNOWN_ID, "not-a-uuid"])
def test_chatflow_detail_unknown_is_404(staff_client, chatflow_id):
    response = staff_client.get(detail(chatflow_id))

    assert response.status_code == 404
    assert error_of(response)["code"] == "chatflow_not_found"


def test_chatflow_update_changes_given_fields_only(staff_client, chatflow):
    response = staff_client.put(
        detail(chatflow.id), {"name": "renamed"}, content_type="application/json"
    )

    assert response.status_code == 200
    chatflow.refresh_from_db()
    assert chatflow.name == "renamed"
    assert chatflow.chatbot_config == {"title": "Hello"}


def test_chatflow_update_flow_data_recomputes_streaming(staff_client, chatflow):
    flow_data = openai_conversation_flow("http://127.0.0.1:9/v1", streaming=False)

    response = staff_client.put(
        detail(chatflow.id), {"flowData": flow_data}, content_type="application/json"
    )

    assert response.status_code == 200
    assert response.json()["isStreaming"] is False
    chatflow.refresh_from_db()
    assert chatflow.flow_data == flow_data
    assert chatflow.is_streaming is False


def test_chatflow_delete_removes_it(staff_client, chatflow):
    response = staff_client.delete(detail(chatflow.id))

    assert response.status_code == 200
    assert not Chatflow.objects.filter(id=chatflow.id).exists()
    assert staff_client.get(detail(chatflow.id)).status_code == 404


# --- invalid flowData ---------------------------------------------------------------------------


def _unknown_type_flow() -> str:
    return flow_json(
        [
            offline("chatOfflineModel_0"),
            node("mystery_0", "vectorStoreRetriever"),
            conversation("conversationChain_0", model="chatOfflineModel_0"),
        ]
    )


def _cycle_flow() -> str:
    nodes = [
        offline("chatOfflineModel_0"),
        conversation("conversationChain_0", model="chatOfflineModel_0"),
    ]
    edges = [
        edge("chatOfflineModel_0", "conversationChain_0", "model"),
        edge("conversationChain_0", "chatOfflineModel_0", "model"),
    ]
    return flow_json(nodes, edges)


def _dangling_flow() -> str:
    return flow_json([conversation("conversationChain_0", model="chatOpenAI_9")])


INVALID_FLOWS = [
    pytest.param(_unknown_type_flow, "unknown_node_type", "mystery_0", id="unknown-type"),
    pytest.param(_cycle_flow, "flow_cycle", "chatOfflineModel_0", id="cycle"),
    pytest.param(_dangling_flow, "dangling_reference", "conversationChain_0", id="dangling"),
]


@pytest.mark.parametrize(("build", "code", "node_id"), INVALID_FLOWS)
def test_chatflow_create_invalid_flow_is_400_naming_the_node(staff_client, build, code, node_id):
    response = staff_client.post(LIST, _new(flowData=build()), content_type="application/json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert node_id in error["message"]
    assert Chatflow.objects.count() == 0


def test_chatflow_create_dangling_reference_names_the_missing_node(staff_client):
    response = staff_client.post(
        LIST, _new(flowData=_dangling_flow()), content_type="application/json"
    )

    assert "chatOpenAI_9" in error_of(response)["message"]


def test_chatflow_create_flow_data_not_json_is_400(staff_client):
    response = staff_client.post(LIST, _new(flowData="{nodes"), content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_flow_json"
    assert Chatflow.objects.count() == 0


@pytest.mark.parametrize(("build", "code", "node_id"), INVALID_FLOWS)
def test_chatflow_update_invalid_flow_is_400_and_leaves_it_unchanged(
    staff_client, chatflow, build, code, node_id
):
    before = Chatflow.objects.get(id=chatflow.id)

    response = staff_client.put(
        detail(chatflow.id),
        {"name": "renamed", "flowData": build()},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert error_of(response)["code"] == code
    after = Chatflow.objects.get(id=chatflow.id)
    assert after.flow_data == before.flow_data
    assert after.name == "existing"
    assert after.is_streaming == before.is_streaming
    assert after.updated_at == before.updated_at


# --- public endpoints ---------------------------------------------------------------------------


def test_chatflow_streaming_says_true_for_a_streaming_flow(client, chatflow):
    response = client.get(f"/api/v1/chatflows-streaming/{chatflow.id}")

    assert response.status_code == 200
    assert response.json() == {"isStreaming": True}


def test_chatflow_streaming_says_false_for_a_non_streaming_flow(client, make_chatflow):
    chatflow = make_chatflow(
        flow_data=openai_conversation_flow("http://127.0.0.1:9/v1", streaming=False)
    )

    response = client.get(f"/api/v1/chatflows-streaming/{chatflow.id}")

    assert response.json() == {"isStreaming": False}


@pytest.mark.parametrize("chatflow_id", [UNKNOWN_ID, "not-a-uuid"])
def test_chatflow_streaming_unknown_is_404(client, chatflow_id):
    response = client.get(f"/api/v1/chatflows-streaming/{chatflow_id}")

    assert response.status_code == 404
    assert error_of(response)["code"] == "chatflow_not_found"


def test_public_chatbot_config_gives_chat_window_settings(client, make_chatflow):
    chatflow = make_chatflow(
        chatbot_config={"title": "Ask me", "welcomeMessage": "Hi!", "allowedOrigins": ["https://a"]}
    )

    response = client.get(f"/api/v1/public-chatbotConfig/{chatflow.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "Ask me"
    assert body["welcomeMessage"] == "Hi!"
    assert body["isTTSEnabled"] is False
    assert isinstance(body["uploads"], dict)
    assert "allowedOrigins" not in body


def test_public_chatbot_config_reveals_nothing_of_the_flow(client, make_chatflow):
    secret_base = "http://internal-llm.example:8080/v1"
    chatflow = make_chatflow(
        flow_data=openai_conversation_flow(secret_base),
        chatbot_config={"title": "Ask me"},
        api_config={"overrideConfig": {"status": True}},
    )

    response = client.get(f"/api/v1/public-chatbotConfig/{chatflow.id}")

    text = response.content.decode()
    assert set(response.json()) == {"title", "uploads", "isTTSEnabled"}
    for leaked in ("flowData", "internal-llm", "chatOpenAI", "nodes", "overrideConfig", "apikey"):
        assert leaked not in text


@pytest.mark.parametrize("chatflow_id", [UNKNOWN_ID, "not-a-uuid"])
def test_public_chatbot_config_unknown_is_404(client, chatflow_id):
    response = client.get(f"/api/v1/public-chatbotConfig/{chatflow_id}")

    assert response.status_code == 404
    assert error_of(response)["code"] == "chatflow_not_found"


def test_ping_answers_pong_as_plain_text(client):
    response = client.get("/api/v1/ping")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"pong"
