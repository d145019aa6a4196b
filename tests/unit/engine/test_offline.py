"""Tests for the deterministic offline chat model and its chatOfflineModel node."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from predictions.engine import EngineConfig, RunInput, parse_flow, run_flow
from predictions.engine.providers import OfflineChatModel
from predictions.engine.types import Message

from .flows import Recorder, conversation, flow_json, history, llm_chain, node, offline, prompt

MESSAGES: list[Message] = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "earlier"},
    {"role": "assistant", "content": "reply"},
    {"role": "user", "content": "hello there"},
]


def offline_flow(**inputs: Any) -> str:
    return flow_json(
        [
            offline(**inputs),
            prompt(),
            llm_chain(model="chatOfflineModel_0", prompt_id="promptTemplate_0"),
        ]
    )


async def collect(model: OfflineChatModel, messages: list[Message]) -> list[str]:
    return [token async for token in model.stream(messages)]


async def test_offline_model_is_deterministic() -> None:
    model = OfflineChatModel()

    first = await collect(model, MESSAGES)
    second = await collect(OfflineChatModel(), list(MESSAGES))

    assert first == second
    assert all(token.endswith((" ", "\n")) for token in first)
    assert "".join(first) == await model.complete(MESSAGES)


async def test_offline_model_quotes_question_and_counts_memory() -> None:
    text = await OfflineChatModel().complete(MESSAGES)

    assert 'You said: "hello there".' in text
    assert "I remember 2 earlier messages" in text


async def test_offline_model_truncates_long_question() -> None:
    text = await OfflineChatModel().complete([{"role": "user", "content": "x" * 500}])

    assert "x" * 200 + "…" in text
    assert "x" * 201 not in text


async def test_offline_node_tokens_input_gives_numbered_tokens() -> None:
    recorder = Recorder()

    result = await run_flow(
        parse_flow(offline_flow(tokens="20")), RunInput("q"), emit=recorder, config=EngineConfig()
    )

    assert recorder.tokens == [f"tok{i} " for i in range(20)]
    assert result.text == "".join(f"tok{i} " for i in range(20))


async def test_offline_node_fixed_reply() -> None:
    recorder = Recorder()

    result = await run_flow(
        parse_flow(offline_flow(reply="Fixed answer\nhere")),
        RunInput("q"),
        emit=recorder,
        config=EngineConfig(),
    )

    assert result.text == "Fixed answer\nhere"
    assert recorder.tokens == ["Fixed ", "answer\n", "here"]


async def test_offline_conversation_remembers_history() -> None:
    flow = parse_flow(
        flow_json(
            [
                offline(),
                node("bufferMemory_0", "bufferMemory", sessionId="", memoryKey=""),
                conversation(model="chatOfflineModel_0", memory="bufferMemory_0"),
            ]
        )
    )

    result = await run_flow(
        flow, RunInput("again", history=history("a", "b")), emit=Recorder(), config=EngineConfig()
    )

    assert 'You said: "again"' in result.text
    assert "I remember 2 earlier messages" in result.text


@pytest.mark.parametrize(
    ("inputs", "config"),
    [
        ({"tokens": 6, "tokenDelayMs": 40}, EngineConfig()),
        ({"tokens": 6}, EngineConfig(offline_token_delay=0.04)),
    ],
)
async def test_offline_node_sleeps_between_tokens(
    inputs: dict[str, Any], config: EngineConfig
) -> None:
    started = time.monotonic()

    await run_flow(
        parse_flow(offline_flow(**inputs)), RunInput("q"), emit=Recorder(), config=config
    )

    assert 0.2 <= time.monotonic() - started < 1.0  # 5 gaps of 40 ms


async def test_offline_node_delay_is_cancellable() -> None:
    recorder = Recorder()
    flow = parse_flow(offline_flow(tokens=100, tokenDelayMs=1000))
    task = asyncio.create_task(run_flow(flow, RunInput("q"), emit=recorder, config=EngineConfig()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.2
    assert recorder.tokens == ["tok0 "]


async def test_force_offline_replaces_chat_openai_without_network() -> None:
    flow = parse_flow(
        flow_json(
            [
                node("chatOpenAI_0", "chatOpenAI", basepath="http://127.0.0.1:9/v1"),
                prompt(),
                llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
            ]
        )
    )
    recorder = Recorder()

    result = await run_flow(
        flow, RunInput("q"), emit=recorder, config=EngineConfig(force_offline=True)
    )

    assert result.text.startswith("Offline model here")
    assert "".join(recorder.tokens) == result.text
