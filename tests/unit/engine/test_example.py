"""Run the real Flowise export against the stub: the model must get what Flowise sent."""

from __future__ import annotations

from typing import Any

from predictions.engine import EngineConfig, RunInput, parse_flow, run_flow

from .flows import Recorder
from .openai_stub import OpenAIStub, Reply


async def test_example_flow_sends_what_flowise_sent(
    openai_stub: OpenAIStub, example_chatflow: dict[str, Any]
) -> None:
    openai_stub.script(Reply.ok(["A queue ", "is FIFO."]))
    flow = parse_flow(example_chatflow["flowData"])
    recorder = Recorder()
    # The export points at Flowise's test server; send it to ours, leaving the file unchanged.
    inp = RunInput("what is a queue?", overrides={"basepath": openai_stub.base_url})

    result = await run_flow(flow, inp, emit=recorder, config=EngineConfig(read_timeout=5))

    body = openai_stub.last_request.json
    assert body["messages"] == [
        {
            "role": "user",
            "content": (
                "You are a terse assistant for Flowsite.\nAnswer the question: what is a queue?"
            ),
        }
    ]
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.7
    assert body["stream"] is True
    assert recorder.tokens == ["A queue ", "is FIFO."]
    assert result.text == "A queue is FIFO."
    assert result.memory_type is None


async def test_example_flow_runs_offline_when_forced(example_chatflow: dict[str, Any]) -> None:
    flow = parse_flow(example_chatflow["flowData"])
    recorder = Recorder()

    result = await run_flow(
        flow, RunInput("what is a queue?"), emit=recorder, config=EngineConfig(force_offline=True)
    )

    assert result.text.startswith("Offline model here")
    assert "Answer the question: what is a queue?" in result.text
    assert "".join(recorder.tokens) == result.text
