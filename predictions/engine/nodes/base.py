"""Node type contract: declared inputs, static checks, and building a per-run instance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import FlowValidationError, node_label
from ..inputs import InputReader
from ..types import ChatTurn, EngineConfig

if TYPE_CHECKING:
    import aiohttp

# What a node's instance is, for checking that a reference points at the right kind of node.
CHAT_MODEL = "chat_model"
PROMPT = "prompt"
CHAT_PROMPT = "chat_prompt"
MEMORY = "memory"
CHAIN = "chain"

KIND_NAMES = {
    CHAT_MODEL: "a chat model",
    PROMPT: "a prompt template",
    CHAT_PROMPT: "a chat prompt template",
    MEMORY: "a memory",
    CHAIN: "a chain",
}


@dataclass(frozen=True)
class InputSpec:
    """One declared input: a value, or a reference (`{{id.data.instance}}`) to `accepts` kinds."""

    name: str
    required: bool = False
    accepts: frozenset[str] = frozenset()

    @property
    def is_ref(self) -> bool:
        """Return True when the input takes another node's instance."""
        return bool(self.accepts)


@dataclass(frozen=True)
class NodeSpec:
    """One parsed node of a flow: id, type and (frozen) inputs/outputs as Flowise stores them."""

    id: str
    type: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] = field(default_factory=dict)
    refs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Return `Node <id> (<type>)` for messages."""
        return node_label(self.id, self.type)


@dataclass
class RunContext:
    """What every node build of one run shares."""

    question: str
    history: tuple[ChatTurn, ...]
    chat_id: str
    session_id: str
    config: EngineConfig
    http: Callable[[], aiohttp.ClientSession]
    text_of: Callable[[str], Awaitable[str]]


@dataclass
class BuildContext:
    """One node's build: its effective inputs and the instances of the nodes it references."""

    node: NodeSpec
    inputs: Mapping[str, Any]
    instances: Mapping[str, Any]
    run: RunContext

    @property
    def read(self) -> InputReader:
        """Return a typed reader over this node's effective inputs."""
        return InputReader(self.node.id, self.node.type, self.inputs)

    def ref(self, name: str) -> Any:
        """Return the instance the reference input `name` points at, or None when unset."""
        ids = self.node.refs.get(name, ())
        return self.instances[ids[0]] if ids else None


class NodeType:
    """A node type: subclasses declare name, label, kind, inputs and implement build()."""

    name: ClassVar[str]
    label: ClassVar[str]
    kind: ClassVar[frozenset[str]] = frozenset()
    inputs: ClassVar[tuple[InputSpec, ...]] = ()
    runnable: ClassVar[bool] = True

    @classmethod
    def input_spec(cls, name: str) -> InputSpec | None:
        """Return the declaration of input `name`, if this type has one."""
        return next((spec for spec in cls.inputs if spec.name == name), None)

    def check(self, node: NodeSpec) -> None:
        """Validate literal inputs at parse time (raise FlowValidationError); default: nothing."""

    def streams(self, node: NodeSpec) -> bool:
        """Return True when this node is a chat model that streams its answer."""
        return False

    def window(self, node: NodeSpec) -> int | None:
        """Return how many exchanges a memory node keeps (None: all, or not a memory)."""
        return None

    async def build(self, ctx: BuildContext) -> Any:
        """Return this node's instance for one run."""
        raise FlowValidationError(f"{ctx.node.label} cannot run", node_id=ctx.node.id)
