"""Apply a prediction's overrideConfig to node inputs, as Flowise's replaceInputsWithConfig does."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .flow import Flow
from .inputs import thaw
from .nodes import NODE_TYPES, NodeSpec


def _merge_object(current: Any, extra: Mapping[str, Any]) -> Any:
    """Merge `extra` into a JSON-object input (a JSON string or an object)."""
    if isinstance(current, str) and current.strip().startswith("{"):
        try:
            current = json.loads(current)
        except ValueError:
            return thaw(extra)
    if isinstance(current, Mapping):
        return {**thaw(current), **thaw(extra)}
    return thaw(extra)


def node_inputs(node: NodeSpec, overrides: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the node's inputs with `overrides` applied (the node itself is not changed).

    A scalar applies to every node that declares an input of that name; an object keyed by node
    ids applies to those nodes only; any other object is merged into a JSON-object input.
    Reference inputs are never overridden.
    """
    node_type = NODE_TYPES[node.type]
    inputs: dict[str, Any] | None = None
    for key, value in overrides.items():
        spec = node_type.input_spec(key)
        if spec is None or spec.is_ref:
            continue
        if isinstance(value, Mapping):
            if node.id in value:
                new_value = thaw(value[node.id])
            elif any(node.type in str(target) for target in value):
                continue  # a per-node override aimed at another node of this type
            else:
                new_value = _merge_object(node.inputs.get(key), value)
        else:
            new_value = thaw(value)
        if inputs is None:
            inputs = dict(node.inputs)
        inputs[key] = new_value
    return node.inputs if inputs is None else MappingProxyType(inputs)


def flow_inputs(flow: Flow, overrides: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Return {node id: effective inputs} for the nodes a run builds."""
    return {node_id: node_inputs(flow.nodes[node_id], overrides) for node_id in flow.order}
