"""Filter a request's overrideConfig down to what the chatflow explicitly allows (Flowise's rule).

The chatflow's apiConfig holds `{"overrideConfig": {"status": true, "nodes": {"chatOpenAI":
["temperature"], "promptTemplate_0": ["promptValues"]}}}`: node types or node ids mapped to the
input names a caller may override. Anything else is dropped silently, as Flowise does, so
existing clients that send extra keys keep working; `sessionId` is always honoured (it selects
the conversation, not a node input).
"""

from __future__ import annotations

import logging
from typing import Any

from predictions.models import Chatflow

logger = logging.getLogger(__name__)


def _allowlist(chatflow: Chatflow) -> dict[str, set[str]]:
    config = chatflow.api_config.get("overrideConfig") or {}
    if not isinstance(config, dict):
        return {}
    status = config.get("status")
    # Flowise stores booleans, but "false" as a string must not switch overrides on.
    if not status or (isinstance(status, str) and status.strip().lower() in ("false", "0", "")):
        return {}
    nodes = config.get("nodes") or {}
    if not isinstance(nodes, dict):
        return {}
    return {str(k): {str(name) for name in v} for k, v in nodes.items() if isinstance(v, list)}


def allowed_overrides(chatflow: Chatflow, override_config: dict[str, Any]) -> dict[str, Any]:
    """Return the part of override_config the chatflow allows, in the engine's shape."""
    allow = _allowlist(chatflow)
    if not allow or not override_config:
        return {}
    from predictions.services import flow_for

    flow = flow_for(chatflow)
    node_ids_by_input: dict[str, set[str]] = {}
    for node in flow.nodes.values():
        for input_name in allow.get(node.type, set()) | allow.get(node.id, set()):
            node_ids_by_input.setdefault(input_name, set()).add(node.id)
    result: dict[str, Any] = {}
    for key, value in override_config.items():
        allowed_nodes = node_ids_by_input.get(key)
        if not allowed_nodes:
            continue
        if isinstance(value, dict) and set(value) & set(flow.nodes):
            per_node = {nid: v for nid, v in value.items() if nid in allowed_nodes}
            if per_node:
                result[key] = per_node
        else:
            result[key] = {nid: value for nid in allowed_nodes}
    dropped = set(override_config) - set(result) - {"sessionId"}
    if dropped:
        logger.debug("chatflow %s: overrideConfig keys not allowed: %s", chatflow.id, dropped)
    return result
