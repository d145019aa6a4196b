"""Chain nodes: llmChain (prompt → model) and conversationChain (system + memory + question)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..providers import ChatModel
from ..types import Emit, Message
from .base import CHAIN, CHAT_MODEL, CHAT_PROMPT, MEMORY, PROMPT, BuildContext, InputSpec, NodeType
from .memory import ChatMemory
from .prompts import RenderedPrompt

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_MESSAGE = (
    "The following is a friendly conversation between a human and an AI. The AI is talkative and "
    "provides lots of specific details from its context. If the AI does not know the answer to a "
    "question, it truthfully says it does not know."
)


async def call_model(model: ChatModel, messages: Sequence[Message], emit: Emit | None) -> str:
    """Return the model's answer; with `emit`, stream it and emit each chunk as a "token"."""
    if emit is None:
        return await model.complete(messages)
    parts: list[str] = []
    stream = model.stream(messages)
    try:
        async for chunk in stream:
            if not chunk:
                continue
            parts.append(chunk)
            await emit("token", chunk)
    finally:
        # Close the generator now (not at garbage collection) so a cancelled run drops the
        # HTTP response, and the model server sees the client leave.
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return "".join(parts)


@dataclass(frozen=True)
class Chain:
    """A chain node's instance: the messages it sends and the model it sends them to."""

    node_id: str
    model: ChatModel
    messages: tuple[Message, ...]

    async def run(self, *, emit: Emit | None = None) -> str:
        """Call the model and return its answer; stream tokens to `emit` when given."""
        logger.debug(
            "chain %s: calling the model with %d messages", self.node_id, len(self.messages)
        )
        return await call_model(self.model, self.messages, emit)


class LLMChainNode(NodeType):
    """`llmChain`: renders its prompt and asks its model."""

    name = "llmChain"
    label = "LLM Chain"
    kind = frozenset({CHAIN})
    inputs = (
        InputSpec("model", required=True, accepts=frozenset({CHAT_MODEL})),
        InputSpec("prompt", required=True, accepts=frozenset({PROMPT})),
        InputSpec("outputParser", accepts=frozenset({"output_parser"})),
        InputSpec("inputModeration", accepts=frozenset({"moderation"})),
        InputSpec("chainName"),
    )

    async def build(self, ctx: BuildContext) -> Chain:
        prompt: RenderedPrompt = ctx.ref("prompt")
        return Chain(node_id=ctx.node.id, model=ctx.ref("model"), messages=tuple(prompt.messages()))


class ConversationChainNode(NodeType):
    """`conversationChain`: system message, the memory's turns, then the question."""

    name = "conversationChain"
    label = "Conversation Chain"
    kind = frozenset({CHAIN})
    inputs = (
        InputSpec("model", required=True, accepts=frozenset({CHAT_MODEL})),
        InputSpec("memory", accepts=frozenset({MEMORY})),
        InputSpec("chatPromptTemplate", accepts=frozenset({CHAT_PROMPT})),
        InputSpec("inputModeration", accepts=frozenset({"moderation"})),
        InputSpec("systemMessagePrompt"),
    )

    async def build(self, ctx: BuildContext) -> Chain:
        prompt: RenderedPrompt | None = ctx.ref("chatPromptTemplate")
        memory: ChatMemory | None = ctx.ref("memory")
        system = prompt.system if prompt is not None and prompt.system else None
        if system is None:
            system = ctx.read.text("systemMessagePrompt", DEFAULT_SYSTEM_MESSAGE)
        messages: list[Message] = [{"role": "system", "content": system or ""}]
        if memory is not None:
            messages.extend(memory.messages())
        human = prompt.human if prompt is not None else ctx.run.question
        messages.append({"role": "user", "content": human})
        return Chain(node_id=ctx.node.id, model=ctx.ref("model"), messages=tuple(messages))
