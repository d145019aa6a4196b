"""Builders for small flowData documents in Flowise's export shape."""

from __future__ import annotations

import json
import re
from typing import Any

from predictions.engine import ChatTurn

_REF = re.compile(r"\{\{(\S+?)\.data\.instance\}\}")


def ref(node_id: str) -> str:
    """Return Flowise's reference to another node's instance."""
    return f"{{{{{node_id}.data.instance}}}}"


def node(node_id: str, name: str, outputs: dict[str, Any] | None = None, **inputs: Any) -> dict:
    """Return one node as Flowise exports it (only the fields the engine reads, plus noise)."""
    return {
        "id": node_id,
        "position": {"x": 0, "y": 0},
        "type": "customNode",
        "data": {
            "id": node_id,
            "label": name,
            "name": name,
            "inputs": inputs,
            "outputs": outputs or {},
            "inputParams": [],
            "inputAnchors": [],
        },
    }


def edge(source: str, target: str, handle: str = "input") -> dict:
    """Return one edge from `source` to `target`."""
    return {
        "source": source,
        "target": target,
        "sourceHandle": f"{source}-output",
        "targetHandle": f"{target}-input-{handle}",
        "id": f"{source}-{target}-{handle}",
    }


def flow_json(nodes: list[dict], edges: list[dict] | None = None) -> str:
    """Return flowData as Flowise stores it: a JSON string."""
    if edges is None:
        edges = [
            edge(match.group(1), n["id"], name)
            for n in nodes
            for name, value in n["data"]["inputs"].items()
            if isinstance(value, str) and (match := _REF.fullmatch(value))
        ]
    return json.dumps({"nodes": nodes, "edges": edges, "viewport": {"x": 0, "y": 0, "zoom": 1}})


def openai(node_id: str = "chatOpenAI_0", base_url: str = "", **inputs: Any) -> dict:
    """Return a chatOpenAI node pointing at `base_url`."""
    values: dict[str, Any] = {
        "modelName": "gpt-4o-mini",
        "temperature": 0.7,
        "streaming": True,
        "maxTokens": "",
        "topP": "",
        "timeout": "",
        "basepath": base_url,
        "baseOptions": "",
    }
    values.update(inputs)
    return node(node_id, "chatOpenAI", **values)


def offline(node_id: str = "chatOfflineModel_0", **inputs: Any) -> dict:
    """Return a chatOfflineModel node."""
    return node(node_id, "chatOfflineModel", **inputs)


def prompt(node_id: str = "promptTemplate_0", template: str = "{question}", **values: Any) -> dict:
    """Return a promptTemplate node; `values` become promptValues (a JSON string)."""
    return node(node_id, "promptTemplate", template=template, promptValues=json.dumps(values))


def llm_chain(node_id: str = "llmChain_0", model: str = "", prompt_id: str = "", **kw: Any) -> dict:
    """Return an llmChain node referencing `model` and `prompt_id`."""
    return node(
        node_id,
        "llmChain",
        outputs={"output": kw.pop("output", "llmChain")},
        model=ref(model) if model else "",
        prompt=ref(prompt_id) if prompt_id else "",
        outputParser="",
        inputModeration="",
        chainName="",
        **kw,
    )


def conversation(
    node_id: str = "conversationChain_0", model: str = "", memory: str = "", **inputs: Any
) -> dict:
    """Return a conversationChain node."""
    return node(
        node_id,
        "conversationChain",
        model=ref(model) if model else "",
        memory=ref(memory) if memory else "",
        chatPromptTemplate=inputs.pop("chatPromptTemplate", ""),
        inputModeration="",
        **inputs,
    )


def history(*contents: str) -> tuple[ChatTurn, ...]:
    """Return alternating user/assistant turns."""
    roles = ("userMessage", "apiMessage")
    return tuple(ChatTurn(roles[i % 2], text) for i, text in enumerate(contents))


class Recorder:
    """An `emit` callback that records events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def __call__(self, event: str, data: Any) -> None:
        self.events.append((event, data))

    @property
    def tokens(self) -> list[str]:
        """Return the data of every "token" event."""
        return [data for event, data in self.events if event == "token"]
