"""Secrets in node inputs: encrypted at rest, masked by the API, kept when the mask comes back."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from predictions import services
from predictions.models import Chatflow, Prediction
from predictions.secrets import MASK
from tests.unit.engine.flows import flow_json, llm_chain, openai, prompt
from tests.unit.engine.openai_stub import OpenAIStub, Reply
from tests.unit.helpers import error_of, post_json, prediction_url

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk-secret-0123456789"


def _flow(base_url: str = "http://127.0.0.1:9/v1", **model_inputs) -> str:
    return flow_json(
        [
            openai("chatOpenAI_0", base_url=base_url, **model_inputs),
            prompt("promptTemplate_0", template="{question}"),
            llm_chain("llmChain_0", model="chatOpenAI_0", prompt_id="promptTemplate_0"),
        ]
    )


def _model_inputs(flow_data: str) -> dict:
    nodes = json.loads(flow_data)["nodes"]
    return next(n for n in nodes if n["id"] == "chatOpenAI_0")["data"]["inputs"]


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def test_create_stores_node_secrets_encrypted(staff_client: Client):
    response = staff_client.post(
        "/api/v1/chatflows",
        {"name": "s", "flowData": _flow(openAIApiKey=SECRET)},
        content_type="application/json",
    )
    assert response.status_code == 200
    stored = Chatflow.objects.get().flow_data
    assert SECRET not in stored
    assert _model_inputs(stored)["openAIApiKey"].startswith("fsenc:v1:")


def test_api_never_returns_a_node_secret(staff_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow(openAIApiKey=SECRET))
    for url in ("/api/v1/chatflows", f"/api/v1/chatflows/{chatflow.id}"):
        response = staff_client.get(url)
        assert response.status_code == 200
        assert SECRET not in response.content.decode()
        assert "fsenc:" not in response.content.decode()
    body = staff_client.get(f"/api/v1/chatflows/{chatflow.id}").json()
    assert _model_inputs(body["flowData"])["openAIApiKey"] == MASK
    assert _model_inputs(body["flowData"])["modelName"] == "gpt-4o-mini"


def test_put_with_the_mask_keeps_the_stored_secret(staff_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow(openAIApiKey=SECRET))
    shown = staff_client.get(f"/api/v1/chatflows/{chatflow.id}").json()["flowData"]
    edited = shown.replace('"gpt-4o-mini"', '"gpt-4.1"')

    response = staff_client.put(
        f"/api/v1/chatflows/{chatflow.id}", {"flowData": edited}, content_type="application/json"
    )

    assert response.status_code == 200
    chatflow.refresh_from_db()
    running = services.flow_for(chatflow).nodes["chatOpenAI_0"].inputs
    assert running["openAIApiKey"] == SECRET
    assert running["modelName"] == "gpt-4.1"


def test_put_with_a_new_secret_replaces_it(staff_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow(openAIApiKey=SECRET))
    response = staff_client.put(
        f"/api/v1/chatflows/{chatflow.id}",
        {"flowData": _flow(openAIApiKey="sk-new")},
        content_type="application/json",
    )
    assert response.status_code == 200
    chatflow.refresh_from_db()
    assert services.flow_for(chatflow).nodes["chatOpenAI_0"].inputs["openAIApiKey"] == "sk-new"


async def test_the_model_server_gets_the_decrypted_key(api, openai_stub: OpenAIStub):
    from asgiref.sync import sync_to_async

    openai_stub.script(Reply.ok(["ok"]))
    chatflow = await sync_to_async(services.chatflow_create)(
        name="s", flow_data=_flow(openai_stub.base_url, openAIApiKey=SECRET)
    )

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 200
    assert openai_stub.last_request.headers["authorization"] == f"Bearer {SECRET}"


async def test_an_allowed_secret_override_is_encrypted_in_the_prediction_row(
    api, openai_stub: OpenAIStub
):
    from asgiref.sync import sync_to_async

    openai_stub.script(Reply.ok(["ok"]))
    chatflow = await sync_to_async(services.chatflow_create)(
        name="s",
        flow_data=_flow(openai_stub.base_url),
        api_config={"overrideConfig": {"status": True, "nodes": {"chatOpenAI": ["openAIApiKey"]}}},
    )

    response = await post_json(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "overrideConfig": {"openAIApiKey": "sk-override"}},
    )

    assert response.status_code == 200
    assert openai_stub.last_request.headers["authorization"] == "Bearer sk-override"
    prediction = await Prediction.objects.aget()
    assert "sk-override" not in json.dumps(prediction.request)


def test_invalid_flow_with_secret_is_refused_without_echoing_it(staff_client: Client):
    flow = json.loads(_flow(openAIApiKey=SECRET))
    flow["nodes"][0]["data"]["name"] = "madeUpNode"
    response = staff_client.post(
        "/api/v1/chatflows",
        {"name": "s", "flowData": json.dumps(flow)},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert SECRET not in json.dumps(error_of(response))


def test_the_migration_encrypts_secrets_stored_before_it():
    import importlib

    from django.apps import apps

    migration = importlib.import_module("predictions.migrations.0002_encrypt_secrets")
    chatflow = Chatflow.objects.create(name="old", flow_data=_flow(openAIApiKey=SECRET))
    prediction = Prediction.objects.create(
        chatflow=chatflow,
        chat_id="c",
        session_id="c",
        request={"question": "q", "overrideConfig": {"openAIApiKey": {"chatOpenAI_0": SECRET}}},
    )

    migration.encrypt(apps, None)

    chatflow.refresh_from_db()
    prediction.refresh_from_db()
    assert SECRET not in chatflow.flow_data
    assert SECRET not in json.dumps(prediction.request)
    assert prediction.request["question"] == "q"
    assert services.flow_for(chatflow).nodes["chatOpenAI_0"].inputs["openAIApiKey"] == SECRET

    migration.decrypt(apps, None)
    chatflow.refresh_from_db()
    assert _model_inputs(chatflow.flow_data)["openAIApiKey"] == SECRET
