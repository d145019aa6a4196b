"""Registry of the node types the engine runs, keyed by Flowise's `data.name`."""

from __future__ import annotations

from .base import BuildContext, InputSpec, NodeSpec, NodeType, RunContext
from .chains import Chain, ConversationChainNode, LLMChainNode
from .chat_models import ChatOfflineModelNode, ChatOpenAINode
from .memory import BufferMemoryNode, BufferWindowMemoryNode, ChatMemory
from .notes import StickyNoteNode
from .prompts import ChatPromptTemplateNode, PromptTemplateNode, RenderedPrompt

NODE_TYPES: dict[str, NodeType] = {
    node_type.name: node_type
    for node_type in (
        ChatOpenAINode(),
        ChatOfflineModelNode(),
        PromptTemplateNode(),
        ChatPromptTemplateNode(),
        LLMChainNode(),
        ConversationChainNode(),
        BufferMemoryNode(),
        BufferWindowMemoryNode(),
        StickyNoteNode(),
    )
}

CHAIN_TYPES = frozenset({LLMChainNode.name, ConversationChainNode.name})

__all__ = [
    "CHAIN_TYPES",
    "NODE_TYPES",
    "BuildContext",
    "Chain",
    "ChatMemory",
    "InputSpec",
    "NodeSpec",
    "NodeType",
    "RenderedPrompt",
    "RunContext",
]
