"""ChatModel protocol and the deterministic offline chat model (no network)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from .types import Message

logger = logging.getLogger(__name__)

OFFLINE_REPLY_QUOTE_LIMIT = 200

_TOKEN = re.compile(r"\S+\s*|\s+")


class ChatModel(Protocol):
    """What chains need from a chat model node's instance."""

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the answer in chunks (an async generator: close it to abort the request)."""
        ...

    async def complete(self, messages: Sequence[Message]) -> str:
        """Return the whole answer."""
        ...


def split_tokens(text: str) -> list[str]:
    """Split text into word-sized chunks that keep their trailing whitespace."""
    return _TOKEN.findall(text)


def offline_reply(messages: Sequence[Message]) -> str:
    """Return the offline model's default answer, derived only from the messages."""
    conversation = [m for m in messages if m["role"] in ("user", "assistant")]
    last_user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    quoted = last_user.strip()
    if len(quoted) > OFFLINE_REPLY_QUOTE_LIMIT:
        quoted = quoted[:OFFLINE_REPLY_QUOTE_LIMIT].rstrip() + "…"
    earlier = max(len(conversation) - 1, 0) if last_user else len(conversation)
    if earlier == 0:
        memory = "I remember no earlier messages of this conversation."
    elif earlier == 1:
        memory = "I remember 1 earlier message of this conversation."
    else:
        memory = f"I remember {earlier} earlier messages of this conversation."
    return f'Offline model here (no LLM configured). You said: "{quoted}". {memory} '


class OfflineChatModel:
    """Deterministic chat model: same messages, same tokens; sleeps `token_delay` between them."""

    def __init__(
        self, *, token_delay: float = 0.0, reply: str | None = None, tokens: int | None = None
    ):
        self.token_delay = max(token_delay, 0.0)
        self.reply = reply
        self.tokens = tokens

    def tokens_for(self, messages: Sequence[Message]) -> list[str]:
        """Return the chunks this model answers `messages` with."""
        if self.tokens is not None:
            return [f"tok{i} " for i in range(self.tokens)]
        if self.reply is not None:
            return split_tokens(self.reply)
        return split_tokens(offline_reply(messages))

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the answer token by token, sleeping `token_delay` seconds between tokens."""
        for index, token in enumerate(self.tokens_for(messages)):
            if index:
                await asyncio.sleep(self.token_delay)
            yield token

    async def complete(self, messages: Sequence[Message]) -> str:
        """Return the whole answer after as long as streaming it would take."""
        tokens = self.tokens_for(messages)
        await asyncio.sleep(self.token_delay * max(0, len(tokens) - 1))
        return "".join(tokens)
