"""Tests for parse_flow: the real Flowise export, validation errors, streaming detection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from predictions.engine import FlowValidationError, parse_flow

from .flows import (
    conversation,
    edge,
    flow_json,
    llm_chain,
    node,
    offline,
    openai,
    prompt,
    ref,
)


def simple_nodes(**openai_inputs: Any) -> list[dict]:
    return [
        openai(**openai_inputs),
        prompt(),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
    ]


def test_parse_flow_imports_real_flowise_export(example_chatflow: dict[str, Any]) -> None:
    flow = parse_flow(example_chatflow["flowData"])

    assert flow.ending_node_id == "llmChain_0"
    assert flow.order == ("chatOpenAI_0", "promptTemplate_0", "llmChain_0")
    assert flow.is_streaming is True
    assert flow.uses_memory is False
    assert flow.memory_window is None
    assert set(flow.node_ids) == {"chatOpenAI_0", "promptTemplate_0", "llmChain_0"}


def test_parse_flow_accepts_decoded_dict(example_chatflow: dict[str, Any]) -> None:
    flow = parse_flow(json.loads(example_chatflow["flowData"]))

    assert flow.ending_node_id == "llmChain_0"


def test_parse_flow_is_immutable(example_chatflow: dict[str, Any]) -> None:
    flow = parse_flow(example_chatflow["flowData"])

    with pytest.raises(TypeError):
        flow.nodes["llmChain_0"].inputs["chainName"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("flow_data", "code"),
    [
        ("{not json", "invalid_flow_json"),
        ("[]", "invalid_flow_json"),
        ('{"nodes": {}}', "invalid_flow_json"),
        ('{"nodes": [], "edges": {}}', "invalid_flow_json"),
    ],
)
def test_parse_flow_rejects_malformed_json(flow_data: str, code: str) -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_data)

    assert info.value.code == code


def test_parse_flow_rejects_unknown_node_type() -> None:
    nodes = [*simple_nodes(), node("agent_0", "toolAgent")]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes))

    assert info.value.code == "unknown_node_type"
    assert info.value.node_id == "agent_0"
    assert "agent_0" in info.value.message
    assert "llmChain" in info.value.message  # lists the supported types


def test_parse_flow_rejects_dangling_reference() -> None:
    nodes = [prompt(), llm_chain(model="chatOpenAI_9", prompt_id="promptTemplate_0")]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes, edges=[]))

    assert info.value.code == "dangling_reference"
    assert "llmChain_0" in info.value.message
    assert "chatOpenAI_9" in info.value.message


def test_parse_flow_rejects_edge_to_missing_node() -> None:
    edges = [edge("ghost_0", "llmChain_0")]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(simple_nodes(), edges=edges))

    assert info.value.code == "dangling_reference"
    assert "ghost_0" in info.value.message


def test_parse_flow_rejects_cycle() -> None:
    nodes = [
        openai(),
        prompt(template="{a}", a=ref("llmChain_1")),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
        prompt("promptTemplate_1", template="{b}", b=ref("llmChain_0")),
        llm_chain("llmChain_1", model="chatOpenAI_0", prompt_id="promptTemplate_1"),
    ]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes, edges=[]))

    assert info.value.code == "flow_cycle"
    assert "llmChain_0" in info.value.message


def test_parse_flow_rejects_missing_required_input() -> None:
    nodes = [openai(), prompt(), llm_chain(model="chatOpenAI_0")]
    edges = [edge("chatOpenAI_0", "llmChain_0"), edge("promptTemplate_0", "llmChain_0")]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes, edges))

    assert info.value.code == "missing_input"
    assert info.value.message == 'Node llmChain_0 (llmChain): required input "prompt" is empty'


def test_parse_flow_rejects_empty_template() -> None:
    nodes = simple_nodes()
    nodes[1]["data"]["inputs"]["template"] = ""

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes))

    assert info.value.code == "missing_input"
    assert "promptTemplate_0" in info.value.message


def test_parse_flow_rejects_flow_without_chain_at_the_end() -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json([openai()]))

    assert info.value.code == "no_ending_node"
    assert "chatOpenAI_0" in info.value.message


def test_parse_flow_rejects_empty_flow() -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow('{"nodes": [], "edges": []}')

    assert info.value.code == "no_ending_node"


def test_parse_flow_rejects_two_ending_chains() -> None:
    nodes = [
        *simple_nodes(),
        llm_chain("llmChain_1", model="chatOpenAI_0", prompt_id="promptTemplate_0"),
    ]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes))

    assert info.value.code == "no_ending_node"
    assert "llmChain_0" in info.value.message
    assert "llmChain_1" in info.value.message


def test_parse_flow_prefers_the_chain_among_several_leaves() -> None:
    nodes = [*simple_nodes(), openai("chatOpenAI_1"), node("stickyNote_0", "stickyNote", note="hi")]

    flow = parse_flow(flow_json(nodes))

    assert flow.ending_node_id == "llmChain_0"
    assert "chatOpenAI_1" not in flow.order  # not needed by the ending node


def test_parse_flow_rejects_reference_to_wrong_kind_of_node() -> None:
    nodes = [openai(), prompt(), llm_chain(model="promptTemplate_0", prompt_id="promptTemplate_0")]

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes))

    assert info.value.code == "invalid_flow"
    assert 'input "model" must reference a chat model' in info.value.message


def test_parse_flow_rejects_bad_number() -> None:
    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(simple_nodes(temperature="warm")))

    assert info.value.code == "invalid_flow"
    assert 'Node chatOpenAI_0 (chatOpenAI): input "temperature"' in info.value.message


def test_parse_flow_rejects_template_with_unmatched_brace() -> None:
    nodes = simple_nodes()
    nodes[1]["data"]["inputs"]["template"] = "Answer {question"

    with pytest.raises(FlowValidationError) as info:
        parse_flow(flow_json(nodes))

    assert info.value.code == "invalid_flow"
    assert "promptTemplate_0" in info.value.message


@pytest.mark.parametrize(
    ("streaming", "expected"),
    [(True, True), ("true", True), ("", True), (False, False), ("false", False)],
)
def test_parse_flow_is_streaming_follows_chat_openai_input(
    streaming: object, expected: bool
) -> None:
    flow = parse_flow(flow_json(simple_nodes(streaming=streaming)))

    assert flow.is_streaming is expected


def test_parse_flow_offline_model_always_streams() -> None:
    nodes = [
        offline(),
        prompt(),
        llm_chain(model="chatOfflineModel_0", prompt_id="promptTemplate_0"),
    ]

    assert parse_flow(flow_json(nodes)).is_streaming is True


def test_parse_flow_reports_memory_window() -> None:
    nodes = [
        offline(),
        node("bufferWindowMemory_0", "bufferWindowMemory", k="3", sessionId="", memoryKey=""),
        conversation(model="chatOfflineModel_0", memory="bufferWindowMemory_0"),
    ]

    flow = parse_flow(flow_json(nodes))

    assert flow.uses_memory is True
    assert flow.memory_window == 3
    assert flow.memory_type == "Buffer Window Memory"


def test_parse_flow_buffer_memory_has_no_window() -> None:
    nodes = [
        offline(),
        node("bufferMemory_0", "bufferMemory", sessionId="", memoryKey="chat_history"),
        conversation(model="chatOfflineModel_0", memory="bufferMemory_0"),
    ]

    flow = parse_flow(flow_json(nodes))

    assert (flow.uses_memory, flow.memory_window, flow.memory_type) == (
        True,
        None,
        "Buffer Memory",
    )
