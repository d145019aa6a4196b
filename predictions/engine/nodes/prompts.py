"""Prompt nodes: promptTemplate (one user message) and chatPromptTemplate (system + user)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PromptError
from ..inputs import InputReader
from ..templates import (
    QUESTION_NAMES,
    TemplateSyntaxError,
    embedded_refs,
    history_as_text,
    render_template,
    substitute,
    template_variables,
)
from ..types import Message
from .base import CHAT_PROMPT, PROMPT, BuildContext, InputSpec, NodeSpec, NodeType


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt node's instance: its rendered system text (chat prompts only) and user text."""

    node_id: str
    human: str
    system: str | None = None

    def messages(self) -> list[Message]:
        """Return the chat messages this prompt sends: [system,] user."""
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.human})
        return messages

    def __str__(self) -> str:
        return self.human


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value)


async def prompt_values(ctx: BuildContext) -> dict[str, str]:
    """Return promptValues with {{question}}, {{chat_history}} and node references filled in."""
    chat_history = history_as_text(ctx.run.history)
    values: dict[str, str] = {}
    for name, value in ctx.read.json_object("promptValues").items():
        if isinstance(value, str):
            refs = {node_id: await ctx.run.text_of(node_id) for node_id in embedded_refs(value)}
            values[name] = substitute(
                value, question=ctx.run.question, chat_history=chat_history, refs=refs
            )
        else:
            values[name] = _value_text(value)
    return values


def check_template(reader: InputReader, name: str) -> None:
    """Raise FlowValidationError when the literal template in input `name` has bad braces."""
    template = reader.text(name)
    if template is None:
        return
    try:
        template_variables(template)
    except TemplateSyntaxError as exc:
        raise reader.error(name, f"is not a valid template: {exc}") from None


def fill_template(
    reader: InputReader, name: str, template: str, values: Mapping[str, str], question: str
) -> str:
    """Render `template`; `{question}`/`{input}` default to the question, others must be set."""
    label = f"Node {reader.node_id} ({reader.node_type})"
    try:
        variables = template_variables(template)
    except TemplateSyntaxError as exc:
        raise PromptError(
            f'{label}: input "{name}" is not a valid template: {exc}', node_id=reader.node_id
        ) from None
    filled: dict[str, str] = {}
    for var in variables:
        if var in values:
            filled[var] = values[var]
        elif var in QUESTION_NAMES:
            filled[var] = question
        else:
            raise PromptError(
                f'{label}: template variable "{var}" in input "{name}" has no value '
                "(set it in promptValues)",
                node_id=reader.node_id,
            )
    return render_template(template, filled)


class PromptTemplateNode(NodeType):
    """`promptTemplate`: a template rendered into one user message."""

    name = "promptTemplate"
    label = "Prompt Template"
    kind = frozenset({PROMPT})
    inputs = (InputSpec("template", required=True), InputSpec("promptValues"))

    def check(self, node: NodeSpec) -> None:
        reader = InputReader(node.id, node.type, node.inputs)
        check_template(reader, "template")
        reader.json_object("promptValues")

    async def build(self, ctx: BuildContext) -> RenderedPrompt:
        reader = ctx.read
        template = reader.required_text("template")
        values = await prompt_values(ctx)
        text = fill_template(reader, "template", template, values, ctx.run.question)
        return RenderedPrompt(node_id=ctx.node.id, human=text)


class ChatPromptTemplateNode(NodeType):
    """`chatPromptTemplate`: a system and a human template rendered into two chat messages."""

    name = "chatPromptTemplate"
    label = "Chat Prompt Template"
    kind = frozenset({PROMPT, CHAT_PROMPT})
    inputs = (
        InputSpec("systemMessagePrompt"),
        InputSpec("humanMessagePrompt", required=True),
        InputSpec("promptValues"),
    )

    def check(self, node: NodeSpec) -> None:
        reader = InputReader(node.id, node.type, node.inputs)
        check_template(reader, "systemMessagePrompt")
        check_template(reader, "humanMessagePrompt")
        reader.json_object("promptValues")

    async def build(self, ctx: BuildContext) -> RenderedPrompt:
        reader = ctx.read
        human = reader.required_text("humanMessagePrompt")
        system = reader.text("systemMessagePrompt")
        values = await prompt_values(ctx)
        question = ctx.run.question
        return RenderedPrompt(
            node_id=ctx.node.id,
            system=fill_template(reader, "systemMessagePrompt", system, values, question)
            if system is not None
            else None,
            human=fill_template(reader, "humanMessagePrompt", human, values, question),
        )
