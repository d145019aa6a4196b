"""Tests for chains, memory and overrides: what the model receives, and what run_flow returns."""

from __future__ import annotations

from typing import Any

import pytest

from predictions.engine import EngineConfig, RunInput, parse_flow, run_flow
from predictions.engine.nodes.chains import DEFAULT_SYSTEM_MESSAGE

from .flows import (
    Recorder,
    conversation,
    flow_json,
    history,
    llm_chain,
    node,
    openai,
    prompt,
    ref,
)
from .openai_stub import OpenAIStub

CONFIG = EngineConfig(read_timeout=5)


def memory_flow(stub: OpenAIStub, memory: dict | None, **chain_inputs: Any) -> str:
    nodes = [openai(base_url=stub.base_url)]
    if memory is not None:
        nodes.append(memory)
    nodes.append(
        conversation(model="chatOpenAI_0", memory=memory["id"] if memory else "", **chain_inputs)
    )
    return flow_json(nodes)


def buffer_memory() -> dict:
    return node("bufferMemory_0", "bufferMemory", sessionId="", memoryKey="chat_history")


def window_memory(k: Any) -> dict:
    return node("bufferWindowMemory_0", "bufferWindowMemory", k=k, sessionId="", memoryKey="")


async def test_conversation_chain_sends_system_history_then_question(
    openai_stub: OpenAIStub,
) -> None:
    flow = parse_flow(memory_flow(openai_stub, buffer_memory()))
    inp = RunInput("third?", history=history("first", "one", "second", "two"))

    result = await run_flow(flow, inp, emit=Recorder(), config=CONFIG)

    assert openai_stub.last_request.json["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_MESSAGE},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "third?"},
    ]
    assert result.memory_type == "Buffer Memory"


async def test_conversation_chain_uses_system_message_prompt(openai_stub: OpenAIStub) -> None:
    flow = parse_flow(memory_flow(openai_stub, None, systemMessagePrompt="Be brief."))

    result = await run_flow(
        flow, RunInput("hi", history=history("old", "older")), emit=Recorder(), config=CONFIG
    )

    assert openai_stub.last_request.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert result.memory_type is None


async def test_conversation_chain_uses_chat_prompt_template(openai_stub: OpenAIStub) -> None:
    nodes = [
        openai(base_url=openai_stub.base_url),
        node(
            "chatPromptTemplate_0",
            "chatPromptTemplate",
            systemMessagePrompt="You are {name}.",
            humanMessagePrompt="Q: {input}",
            promptValues='{"name": "Ada"}',
        ),
        buffer_memory(),
        conversation(
            model="chatOpenAI_0",
            memory="bufferMemory_0",
            chatPromptTemplate=ref("chatPromptTemplate_0"),
            systemMessagePrompt="ignored",
        ),
    ]

    await run_flow(
        parse_flow(flow_json(nodes)),
        RunInput("why?", history=history("a", "b")),
        emit=Recorder(),
        config=CONFIG,
    )

    assert openai_stub.last_request.json["messages"] == [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Q: why?"},
    ]


@pytest.mark.parametrize(("k", "kept"), [("1", 2), (2, 4), ("", 6), (0, 0)])
async def test_buffer_window_memory_keeps_last_k_exchanges(
    openai_stub: OpenAIStub, k: Any, kept: int
) -> None:
    flow = parse_flow(memory_flow(openai_stub, window_memory(k)))
    turns = history("u1", "a1", "u2", "a2", "u3", "a3")

    result = await run_flow(flow, RunInput("now", history=turns), emit=Recorder(), config=CONFIG)

    messages = openai_stub.last_request.json["messages"]
    sent = [m["content"] for m in messages[1:-1]]
    assert sent == [t.content for t in turns[len(turns) - kept :]]
    assert result.memory_type == "Buffer Window Memory"


async def test_llm_chain_gets_no_history(openai_stub: OpenAIStub) -> None:
    nodes = [
        openai(base_url=openai_stub.base_url),
        prompt(),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
    ]

    await run_flow(
        parse_flow(flow_json(nodes)),
        RunInput("q", history=history("a", "b")),
        emit=Recorder(),
        config=CONFIG,
    )

    assert openai_stub.last_request.json["messages"] == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize("output", ["llmChain", "outputPrediction"])
async def test_llm_chain_answer_is_text_for_either_output(
    openai_stub: OpenAIStub, output: str
) -> None:
    nodes = [
        openai(base_url=openai_stub.base_url, streaming=False),
        prompt(),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0", output=output),
    ]
    recorder = Recorder()

    result = await run_flow(
        parse_flow(flow_json(nodes)), RunInput("q"), emit=recorder, config=CONFIG
    )

    assert result.text == "Hello from the stub."
    assert recorder.events == []  # not streaming: no tokens
    assert openai_stub.last_request.json["stream"] is False


def two_model_flow(stub: OpenAIStub) -> str:
    nodes = [
        openai("chatOpenAI_0", base_url=stub.base_url, temperature=0.7),
        openai("chatOpenAI_1", base_url=stub.base_url, temperature="0.5", streaming=False),
        prompt(template="{question}"),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0", output="outputPrediction"),
        prompt("promptTemplate_1", template="{x}", x=ref("llmChain_0")),
        llm_chain("llmChain_1", model="chatOpenAI_1", prompt_id="promptTemplate_1"),
    ]
    return flow_json(nodes)


async def test_override_scalar_applies_to_every_node_with_that_input(
    openai_stub: OpenAIStub,
) -> None:
    flow = parse_flow(two_model_flow(openai_stub))

    await run_flow(
        flow,
        RunInput("q", overrides={"temperature": 0.2, "noSuchInput": 1}),
        emit=Recorder(),
        config=CONFIG,
    )

    assert [r.json["temperature"] for r in openai_stub.requests] == [0.2, 0.2]


async def test_override_per_node_id_applies_to_that_node_only(openai_stub: OpenAIStub) -> None:
    flow = parse_flow(two_model_flow(openai_stub))

    await run_flow(
        flow,
        RunInput("q", overrides={"temperature": {"chatOpenAI_1": 0.1}}),
        emit=Recorder(),
        config=CONFIG,
    )

    assert [r.json["temperature"] for r in openai_stub.requests] == [0.7, 0.1]
    assert flow.nodes["chatOpenAI_1"].inputs["temperature"] == "0.5"  # cached flow unchanged


async def test_override_object_merges_into_prompt_values(openai_stub: OpenAIStub) -> None:
    nodes = [
        openai(base_url=openai_stub.base_url),
        prompt(template="{a} {b}", a="x", b="y"),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
    ]

    await run_flow(
        parse_flow(flow_json(nodes)),
        RunInput("q", overrides={"promptValues": {"b": "z"}}),
        emit=Recorder(),
        config=CONFIG,
    )

    assert openai_stub.last_request.json["messages"][0]["content"] == "x z"
