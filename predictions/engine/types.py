"""Frozen dataclasses the engine takes and returns: config, run input, chat turns, result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

Emit = Callable[[str, Any], Awaitable[None]]

USER_MESSAGE = "userMessage"
API_MESSAGE = "apiMessage"


class Message(TypedDict):
    """One OpenAI-style chat message as sent to a chat model."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatTurn:
    """One earlier message of the session: role is "userMessage" or "apiMessage"."""

    role: str
    content: str


@dataclass(frozen=True)
class EngineConfig:
    """Deployment knobs the caller reads from settings and hands to every run."""

    openai_api_key: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    offline_token_delay: float = 0.0
    force_offline: bool = False
    # The longest a whole answer may take (the prediction's time limit): how long a
    # non-streaming model call may wait for its answer when the node sets no `timeout`.
    answer_timeout: float | None = None


@dataclass(frozen=True)
class RunInput:
    """What one prediction asks: question, earlier turns (oldest first), filtered overrides."""

    question: str
    history: tuple[ChatTurn, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    chat_id: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class RunResult:
    """The answer of a run, plus what Flowise reports next to it."""

    text: str
    memory_type: str | None = None
    source_documents: list[Any] | None = None
    used_tools: list[Any] | None = None
