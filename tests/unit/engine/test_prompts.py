"""Tests for prompt templates: placeholders, prompt values, literal braces, chat prompts."""

from __future__ import annotations

import pytest

from predictions.engine import EngineConfig, PromptError, RunInput, parse_flow, run_flow
from predictions.engine.templates import (
    TemplateSyntaxError,
    history_as_text,
    render_template,
    template_variables,
)

from .flows import Recorder, flow_json, history, llm_chain, node, openai, prompt, ref
from .openai_stub import OpenAIStub, Reply

CONFIG = EngineConfig(read_timeout=5)


async def sent_messages(stub: OpenAIStub, nodes: list[dict], inp: RunInput) -> list[dict]:
    """Run the flow against the stub and return the messages the model received."""
    await run_flow(parse_flow(flow_json(nodes)), inp, emit=Recorder(), config=CONFIG)
    return stub.last_request.json["messages"]  # type: ignore[no-any-return]


def prompt_flow(stub: OpenAIStub, prompt_node: dict) -> list[dict]:
    return [
        openai(base_url=stub.base_url, streaming=False),
        prompt_node,
        llm_chain(model="chatOpenAI_0", prompt_id=prompt_node["id"]),
    ]


def test_template_variables_skips_literal_braces() -> None:
    assert template_variables('JSON like {{"a": 1}} for {topic} and {topic}') == ["topic"]


def test_render_template_turns_double_braces_into_literal_braces() -> None:
    assert render_template("{{x}} = {x}", {"x": "1"}) == "{x} = 1"


@pytest.mark.parametrize("template", ["{open", "close}", "a } b"])
def test_template_variables_rejects_unmatched_braces(template: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        template_variables(template)


def test_history_as_text_formats_like_flowise() -> None:
    assert (
        history_as_text(history("hi", "hello", "bye")) == "Human: hi\nAssistant: hello\nHuman: bye"
    )


async def test_prompt_template_fills_question_and_declared_values(openai_stub: OpenAIStub) -> None:
    node_ = prompt(template="About {product}: {query}", product="Flowsite", query="{{question}}")

    messages = await sent_messages(openai_stub, prompt_flow(openai_stub, node_), RunInput("why?"))

    assert messages == [{"role": "user", "content": "About Flowsite: why?"}]


async def test_prompt_template_question_and_input_default_to_question(
    openai_stub: OpenAIStub,
) -> None:
    node_ = prompt(template="{question} / {input}")

    messages = await sent_messages(openai_stub, prompt_flow(openai_stub, node_), RunInput("q"))

    assert messages[0]["content"] == "q / q"


async def test_prompt_template_fills_chat_history(openai_stub: OpenAIStub) -> None:
    node_ = prompt(template="{history}\nNow: {question}", history="{{chat_history}}")
    inp = RunInput("and now?", history=history("hi", "hello"))

    messages = await sent_messages(openai_stub, prompt_flow(openai_stub, node_), inp)

    assert messages[0]["content"] == "Human: hi\nAssistant: hello\nNow: and now?"


async def test_prompt_template_keeps_literal_braces_and_braces_in_values(
    openai_stub: OpenAIStub,
) -> None:
    node_ = prompt(template='Reply as {{"answer": "..."}} to {question}')

    messages = await sent_messages(
        openai_stub, prompt_flow(openai_stub, node_), RunInput("{weird} {{question}}")
    )

    assert messages[0]["content"] == 'Reply as {"answer": "..."} to {weird} {{question}}'


async def test_prompt_template_missing_variable_is_prompt_error(openai_stub: OpenAIStub) -> None:
    node_ = prompt(template="Tell me about {topic}")

    with pytest.raises(PromptError) as info:
        await sent_messages(openai_stub, prompt_flow(openai_stub, node_), RunInput("q"))

    assert info.value.code == "prompt_error"
    assert info.value.node_id == "promptTemplate_0"
    assert '"topic"' in info.value.message
    assert "promptTemplate_0" in info.value.message
    assert openai_stub.requests == []


async def test_prompt_template_accepts_prompt_values_as_object(openai_stub: OpenAIStub) -> None:
    node_ = node("promptTemplate_0", "promptTemplate", template="{a}-{b}", promptValues={"a": 1})
    node_["data"]["inputs"]["promptValues"] = {"a": 1, "b": True}

    messages = await sent_messages(openai_stub, prompt_flow(openai_stub, node_), RunInput("q"))

    assert messages[0]["content"] == "1-true"


async def test_chat_prompt_template_sends_system_then_user(openai_stub: OpenAIStub) -> None:
    node_ = node(
        "chatPromptTemplate_0",
        "chatPromptTemplate",
        systemMessagePrompt="You speak {language}.",
        humanMessagePrompt="{text}",
        promptValues='{"language": "French", "text": "Translate: {{question}}"}',
    )

    messages = await sent_messages(openai_stub, prompt_flow(openai_stub, node_), RunInput("cat"))

    assert messages == [
        {"role": "system", "content": "You speak French."},
        {"role": "user", "content": "Translate: cat"},
    ]


async def test_prompt_value_can_use_another_chains_answer(openai_stub: OpenAIStub) -> None:
    openai_stub.default = Reply.ok(["first answer"])
    nodes = [
        openai(base_url=openai_stub.base_url, streaming=True),
        prompt(template="Summarise: {question}"),
        llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0", output="outputPrediction"),
        prompt("promptTemplate_1", template="Improve: {draft}", draft=ref("llmChain_0")),
        llm_chain("llmChain_1", model="chatOpenAI_0", prompt_id="promptTemplate_1"),
    ]
    recorder = Recorder()

    result = await run_flow(
        parse_flow(flow_json(nodes)), RunInput("text"), emit=recorder, config=CONFIG
    )

    first, second = openai_stub.requests
    assert first.json["messages"][0]["content"] == "Summarise: text"
    assert first.json["stream"] is False  # intermediate chains never stream tokens
    assert second.json["messages"][0]["content"] == "Improve: first answer"
    assert recorder.tokens == ["first answer"]  # only the ending chain's tokens
    assert result.text == "first answer"
