"""Memory nodes: bufferMemory (the whole session) and bufferWindowMemory (the last k exchanges)."""

from __future__ import annotations

from dataclasses import dataclass

from ..inputs import InputReader
from ..types import API_MESSAGE, USER_MESSAGE, ChatTurn, Message
from .base import MEMORY, BuildContext, InputSpec, NodeSpec, NodeType

DEFAULT_WINDOW = 4


@dataclass(frozen=True)
class ChatMemory:
    """A memory node's instance: the earlier turns a chain sends before the question."""

    memory_type: str
    turns: tuple[ChatTurn, ...]

    def messages(self) -> list[Message]:
        """Return the turns as chat messages (userMessage → user, apiMessage → assistant)."""
        roles = {USER_MESSAGE: "user", API_MESSAGE: "assistant"}
        return [
            {"role": roles[turn.role], "content": turn.content}
            for turn in self.turns
            if turn.role in roles
        ]


class BufferMemoryNode(NodeType):
    """`bufferMemory`: every earlier message of the session."""

    name = "bufferMemory"
    label = "Buffer Memory"
    kind = frozenset({MEMORY})
    inputs = (InputSpec("sessionId"), InputSpec("memoryKey"))

    def window(self, node: NodeSpec) -> int | None:
        """Return how many exchanges the memory keeps (None: all)."""
        return None

    async def build(self, ctx: BuildContext) -> ChatMemory:
        return ChatMemory(memory_type=self.label, turns=ctx.run.history)


class BufferWindowMemoryNode(NodeType):
    """`bufferWindowMemory`: the last `k` exchanges (2k messages) of the session."""

    name = "bufferWindowMemory"
    label = "Buffer Window Memory"
    kind = frozenset({MEMORY})
    inputs = (InputSpec("k"), InputSpec("sessionId"), InputSpec("memoryKey"))

    def window(self, node: NodeSpec) -> int | None:
        """Return k."""
        reader = InputReader(node.id, node.type, node.inputs)
        return reader.integer("k", DEFAULT_WINDOW)

    def check(self, node: NodeSpec) -> None:
        self.window(node)

    async def build(self, ctx: BuildContext) -> ChatMemory:
        k = ctx.read.integer("k", DEFAULT_WINDOW) or 0
        history = ctx.run.history
        return ChatMemory(memory_type=self.label, turns=history[-2 * k :] if k else ())
