"""LangChain f-string prompt templates: `{var}` placeholders, `{{`/`}}` literal braces."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .types import API_MESSAGE, USER_MESSAGE, ChatTurn

QUESTION_VAR = "{{question}}"
CHAT_HISTORY_VAR = "{{chat_history}}"
# Placeholders that fall back to the user's question when promptValues does not set them.
QUESTION_NAMES = ("question", "input")

_REF = re.compile(r"\{\{\s*([^{}\s]+?)\.data\.instance\s*\}\}")
_VARIABLES = re.compile(
    "|".join((re.escape(QUESTION_VAR), re.escape(CHAT_HISTORY_VAR), _REF.pattern))
)


class TemplateSyntaxError(ValueError):
    """The template has an unmatched brace."""


@dataclass(frozen=True)
class Variable:
    """A `{name}` placeholder."""

    name: str


def parse_template(template: str) -> list[str | Variable]:
    """Split a template into literal text and variables, as LangChain's parseFString does."""
    parts: list[str | Variable] = []
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if char == "{" and template.startswith("{{", i):
            parts.append("{")
            i += 2
        elif char == "}" and template.startswith("}}", i):
            parts.append("}")
            i += 2
        elif char == "{":
            end = template.find("}", i)
            if end < 0:
                raise TemplateSyntaxError(f"unclosed '{{' at position {i}")
            parts.append(Variable(template[i + 1 : end].strip()))
            i = end + 1
        elif char == "}":
            raise TemplateSyntaxError(f"single '}}' at position {i} (write '}}}}' for a brace)")
        else:
            nxt = min(
                (p for p in (template.find("{", i), template.find("}", i)) if p >= 0), default=n
            )
            parts.append(template[i:nxt])
            i = nxt
    return parts


def template_variables(template: str) -> list[str]:
    """Return the variable names of a template, in order, without duplicates."""
    names: list[str] = []
    for part in parse_template(template):
        if isinstance(part, Variable) and part.name not in names:
            names.append(part.name)
    return names


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill a template; every variable must be in `values` (KeyError names the first missing)."""
    out: list[str] = []
    for part in parse_template(template):
        out.append(values[part.name] if isinstance(part, Variable) else part)
    return "".join(out)


def history_as_text(history: Sequence[ChatTurn]) -> str:
    """Format turns as Flowise's convertChatHistoryToText does ("Human: …" / "Assistant: …")."""
    lines: list[str] = []
    for turn in history:
        if not turn.content.strip():
            continue
        if turn.role == API_MESSAGE:
            lines.append(f"Assistant: {turn.content}")
        elif turn.role == USER_MESSAGE:
            lines.append(f"Human: {turn.content}")
        else:
            lines.append(turn.content)
    return "\n".join(lines)


def embedded_refs(value: str) -> list[str]:
    """Return the node ids of every `{{id.data.instance}}` inside a string."""
    return _REF.findall(value)


def full_ref(value: str) -> str | None:
    """Return the node id when the whole string is one `{{id.data.instance}}` reference."""
    match = _REF.fullmatch(value.strip())
    return match.group(1) if match else None


def substitute(value: str, *, question: str, chat_history: str, refs: Mapping[str, str]) -> str:
    """Replace `{{question}}`, `{{chat_history}}` and `{{id.data.instance}}` in a prompt value."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == QUESTION_VAR:
            return question
        if match.group(0) == CHAT_HISTORY_VAR:
            return chat_history
        return refs.get(match.group(1), match.group(0))

    # One pass, so a question containing "{{chat_history}}" stays as the user wrote it.
    return _VARIABLES.sub(replace, value)
