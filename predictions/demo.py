"""The demo chatflow: chat prompt, conversation memory and the offline model, Flowise-shaped."""

from __future__ import annotations

import json
import uuid
from typing import Any

DEMO_CHATFLOW_ID = uuid.UUID("f1005173-de30-4000-8000-000000000001")
DEMO_CHATFLOW_NAME = "Demo: offline chat with memory"


def _node(node_id: str, name: str, label: str, x: int, inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": node_id,
        "position": {"x": x, "y": 100},
        "type": "customNode",
        "data": {
            "id": node_id,
            "label": label,
            "name": name,
            "inputs": inputs,
            "outputs": {},
            "inputParams": [],
            "inputAnchors": [],
            "outputAnchors": [],
        },
    }


def _edge(source: str, target: str, handle: str) -> dict[str, str]:
    return {
        "source": source,
        "target": target,
        "sourceHandle": f"{source}-output-{source}",
        "targetHandle": f"{target}-input-{handle}",
        "type": "buttonedge",
        "id": f"{source}-{target}-{handle}",
    }


def demo_flow_data() -> str:
    """Return the demo's flowData (a JSON string, as Flowise stores it)."""
    nodes = [
        _node(
            "chatOfflineModel_0",
            "chatOfflineModel",
            "Offline Chat Model (deterministic, no network)",
            100,
            {"tokenDelayMs": ""},
        ),
        _node(
            "bufferMemory_0",
            "bufferMemory",
            "Buffer Memory",
            100,
            {"sessionId": "", "memoryKey": "chat_history"},
        ),
        _node(
            "chatPromptTemplate_0",
            "chatPromptTemplate",
            "Chat Prompt Template",
            100,
            {
                "systemMessagePrompt": "You are Flowsite's demo assistant. Answer briefly.",
                "humanMessagePrompt": "{question}",
                "promptValues": "",
            },
        ),
        _node(
            "conversationChain_0",
            "conversationChain",
            "Conversation Chain",
            500,
            {
                "model": "{{chatOfflineModel_0.data.instance}}",
                "memory": "{{bufferMemory_0.data.instance}}",
                "chatPromptTemplate": "{{chatPromptTemplate_0.data.instance}}",
                "inputModeration": "",
                "systemMessagePrompt": "",
            },
        ),
    ]
    edges = [
        _edge("chatOfflineModel_0", "conversationChain_0", "model"),
        _edge("bufferMemory_0", "conversationChain_0", "memory"),
        _edge("chatPromptTemplate_0", "conversationChain_0", "chatPromptTemplate"),
    ]
    return json.dumps({"nodes": nodes, "edges": edges, "viewport": {"x": 0, "y": 0, "zoom": 1}})
