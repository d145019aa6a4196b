"""The chatflow admin: secrets masked in the form, kept on save; bad input is a form error."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from predictions import services
from predictions.models import Chatflow
from predictions.secrets import MASK
from tests.unit.engine.flows import flow_json, llm_chain, openai, prompt

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk-admin-secret-42"


def _flow(**inputs) -> str:
    return flow_json(
        [
            openai("chatOpenAI_0", base_url="http://127.0.0.1:9/v1", **inputs),
            prompt("promptTemplate_0", template="{question}"),
            llm_chain("llmChain_0", model="chatOpenAI_0", prompt_id="promptTemplate_0"),
        ]
    )


@pytest.fixture
def admin_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "r@x.org", "pw"))
    return client


def _form(chatflow: Chatflow, **changes) -> dict:
    data = {
        "name": chatflow.name,
        "flow_data": changes.pop("flow_data", None),
        "deployed": "",
        "is_public": "",
        "api_key": "",
        "chatbot_config": "{}",
        "api_config": json.dumps(changes.pop("api_config", {})),
        "_save": "Save",
    }
    data.update(changes)
    return data


def test_change_form_shows_secrets_masked(admin_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow(openAIApiKey=SECRET))
    page = admin_client.get(reverse("admin:predictions_chatflow_change", args=[chatflow.id]))
    body = page.content.decode()
    assert page.status_code == 200
    assert SECRET not in body
    assert "fsenc:" not in body
    assert MASK in body


def test_saving_the_masked_form_keeps_the_secret(admin_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow(openAIApiKey=SECRET))
    url = reverse("admin:predictions_chatflow_change", args=[chatflow.id])
    shown = admin_client.get(url).context["adminform"].form.initial["flow_data"]
    edited = shown.replace('"gpt-4o-mini"', '"gpt-4.1"')

    response = admin_client.post(url, _form(chatflow, flow_data=edited))

    assert response.status_code == 302
    chatflow.refresh_from_db()
    assert SECRET not in chatflow.flow_data
    inputs = services.flow_for(chatflow).nodes["chatOpenAI_0"].inputs
    assert inputs["openAIApiKey"] == SECRET
    assert inputs["modelName"] == "gpt-4.1"


def test_an_invalid_flow_or_rate_limit_is_a_form_error(admin_client: Client):
    chatflow = services.chatflow_create(name="s", flow_data=_flow())
    url = reverse("admin:predictions_chatflow_change", args=[chatflow.id])
    bad_flow = _flow().replace('"chatOpenAI"', '"noSuchNode"')
    response = admin_client.post(url, _form(chatflow, flow_data=bad_flow))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors

    response = admin_client.post(
        url,
        _form(
            chatflow,
            flow_data=chatflow.flow_data,
            api_config={"rateLimit": {"limitMax": "ten", "limitDuration": 60}},
        ),
    )
    assert response.status_code == 200
    assert "limitMax" in str(response.context["adminform"].form.errors)
