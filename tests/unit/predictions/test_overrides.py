"""overrideConfig: only what the chatflow's apiConfig allows reaches the nodes (Flowise's rule).

Flowise drops override keys the chatflow does not list under apiConfig.overrideConfig.nodes,
silently, so clients that send extra keys keep working; Flowsite does the same.
"""

from __future__ import annotations

import uuid

import pytest
from django.test import AsyncClient
from django.utils import timezone

from predictions.models import Chatflow, Prediction
from predictions.overrides import allowed_overrides
from tests.unit.engine.flows import flow_json, llm_chain, openai, prompt, ref
from tests.unit.engine.openai_stub import OpenAIStub
from tests.unit.helpers import acreate_chatflow, openai_flow, post_json, prediction_url

ALLOW_TEMPERATURE = {"overrideConfig": {"status": True, "nodes": {"chatOpenAI": ["temperature"]}}}


def _chatflow(api_config: dict, flow_data: str | None = None) -> Chatflow:
    """An unsaved chatflow (allowed_overrides needs no database)."""
    return Chatflow(
        id=uuid.uuid4(),
        flow_data=flow_data or openai_flow("http://127.0.0.1:9/v1"),
        api_config=api_config,
        updated_at=timezone.now(),
    )


def _two_models() -> str:
    """Two chatOpenAI nodes: the first chain's answer feeds the second chain's prompt."""
    return flow_json(
        [
            openai("chatOpenAI_0", base_url="http://127.0.0.1:9/v1"),
            openai("chatOpenAI_1", base_url="http://127.0.0.1:9/v1"),
            prompt("promptTemplate_0", template="{question}"),
            llm_chain(
                "llmChain_0",
                model="chatOpenAI_0",
                prompt_id="promptTemplate_0",
                output="outputPrediction",
            ),
            prompt("promptTemplate_1", template="{x}", x=ref("llmChain_0")),
            llm_chain("llmChain_1", model="chatOpenAI_1", prompt_id="promptTemplate_1"),
        ]
    )


def test_overrides_without_api_config_drop_everything():
    assert allowed_overrides(_chatflow({}), {"temperature": 0.1, "modelName": "x"}) == {}


def test_overrides_with_status_off_drop_everything():
    config = {"overrideConfig": {"status": False, "nodes": {"chatOpenAI": ["temperature"]}}}

    assert allowed_overrides(_chatflow(config), {"temperature": 0.1}) == {}


def test_overrides_keep_an_allowed_input_for_nodes_of_that_type():
    result = allowed_overrides(_chatflow(ALLOW_TEMPERATURE), {"temperature": 0.1})

    assert result == {"temperature": {"chatOpenAI_0": 0.1}}


def test_overrides_drop_inputs_that_are_not_listed():
    result = allowed_overrides(
        _chatflow(ALLOW_TEMPERATURE), {"temperature": 0.1, "modelName": "gpt-x", "basepath": "x"}
    )

    assert result == {"temperature": {"chatOpenAI_0": 0.1}}


def test_overrides_never_pass_session_id_to_nodes():
    result = allowed_overrides(_chatflow(ALLOW_TEMPERATURE), {"sessionId": "s-1"})

    assert result == {}


def test_overrides_allowed_by_node_id_reach_only_that_node():
    config = {"overrideConfig": {"status": True, "nodes": {"chatOpenAI_1": ["temperature"]}}}

    result = allowed_overrides(_chatflow(config, _two_models()), {"temperature": 0.2})

    assert result == {"temperature": {"chatOpenAI_1": 0.2}}


def test_overrides_keyed_by_node_keep_only_allowed_nodes():
    config = {"overrideConfig": {"status": True, "nodes": {"chatOpenAI_1": ["temperature"]}}}
    override = {"temperature": {"chatOpenAI_0": 0.3, "chatOpenAI_1": 0.4}}

    result = allowed_overrides(_chatflow(config, _two_models()), override)

    assert result == {"temperature": {"chatOpenAI_1": 0.4}}


# --- through the API, as the model sees it ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_overrides_disallowed_temperature_does_not_reach_the_model(
    api: AsyncClient, openai_stub: OpenAIStub
):
    chatflow = await acreate_chatflow(flow_data=openai_flow(openai_stub.base_url))

    response = await post_json(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "overrideConfig": {"temperature": 0.1, "modelName": "gpt-x"}},
    )

    assert response.status_code == 200
    sent = openai_stub.last_request.json
    assert sent["temperature"] == 0.7
    assert sent["model"] == "gpt-4o-mini"
    prediction = await Prediction.objects.aget()
    assert prediction.request["overrideConfig"] == {}


@pytest.mark.django_db(transaction=True)
async def test_overrides_allowed_temperature_reaches_the_model(
    api: AsyncClient, openai_stub: OpenAIStub
):
    chatflow = await acreate_chatflow(
        flow_data=openai_flow(openai_stub.base_url), api_config=ALLOW_TEMPERATURE
    )

    response = await post_json(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "overrideConfig": {"temperature": 0.1, "modelName": "gpt-x"}},
    )

    assert response.status_code == 200
    sent = openai_stub.last_request.json
    assert sent["temperature"] == 0.1
    assert sent["model"] == "gpt-4o-mini"


@pytest.mark.django_db(transaction=True)
async def test_overrides_cannot_redirect_the_model_server(
    api: AsyncClient, openai_stub: OpenAIStub, refused_base_url: str
):
    chatflow = await acreate_chatflow(
        flow_data=openai_flow(openai_stub.base_url), api_config=ALLOW_TEMPERATURE
    )

    response = await post_json(
        api,
        prediction_url(chatflow.id),
        {"question": "hi", "overrideConfig": {"basepath": refused_base_url}},
    )

    assert response.status_code == 200
    assert len(openai_stub.requests) == 1
