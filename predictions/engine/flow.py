"""Parse and validate Flowise flowData into an immutable Flow (nodes, dependency order, ending)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import FlowValidationError, node_label
from .inputs import InputReader, is_empty
from .nodes import CHAIN_TYPES, NODE_TYPES, NodeSpec
from .nodes.base import CHAIN, KIND_NAMES, MEMORY
from .templates import embedded_refs, full_ref

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Flow:
    """A validated chatflow; immutable, so one parsed Flow can serve concurrent runs."""

    nodes: Mapping[str, NodeSpec]
    order: tuple[str, ...]
    ending_node_id: str
    is_streaming: bool
    uses_memory: bool
    memory_window: int | None
    memory_type: str | None

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Return every node id, in flowData order."""
        return tuple(self.nodes)

    @property
    def ending_node(self) -> NodeSpec:
        """Return the node whose answer is the flow's answer."""
        return self.nodes[self.ending_node_id]


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _decode(flow_data: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(flow_data, str | bytes):
        try:
            flow_data = json.loads(flow_data)
        except ValueError as exc:
            raise FlowValidationError(
                f"flowData is not valid JSON: {exc}", code="invalid_flow_json"
            ) from None
        except RecursionError:
            raise FlowValidationError(
                "flowData is not valid JSON: nested too deeply", code="invalid_flow_json"
            ) from None
    if not isinstance(flow_data, Mapping):
        raise FlowValidationError(
            'flowData must be a JSON object with "nodes" and "edges"', code="invalid_flow_json"
        )
    if not isinstance(flow_data.get("nodes"), list):
        raise FlowValidationError('flowData "nodes" must be a list', code="invalid_flow_json")
    if not isinstance(flow_data.get("edges", []), list):
        raise FlowValidationError('flowData "edges" must be a list', code="invalid_flow_json")
    return flow_data


def _raw_nodes(data: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any], Any]]:
    """Return {id: (type, inputs, outputs)}; raise on malformed or unknown nodes."""
    nodes: dict[str, tuple[str, Mapping[str, Any], Any]] = {}
    for index, raw in enumerate(data["nodes"]):
        node_id = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(node_id, str) or not node_id:
            raise FlowValidationError(f"nodes[{index}] has no string id")
        node_data = raw.get("data")
        node_type = node_data.get("name") if isinstance(node_data, Mapping) else None
        if not isinstance(node_type, str) or not node_type:
            raise FlowValidationError(
                f"Node {node_id} has no data.name (node type)", node_id=node_id
            )
        if node_id in nodes:
            raise FlowValidationError(f"Node id {node_id} appears twice", node_id=node_id)
        if node_type not in NODE_TYPES:
            supported = ", ".join(sorted(NODE_TYPES))
            raise FlowValidationError(
                f"{node_label(node_id, node_type)}: unknown node type; supported: {supported}",
                code="unknown_node_type",
                node_id=node_id,
            )
        inputs = node_data.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            raise FlowValidationError(
                f"{node_label(node_id, node_type)}: data.inputs must be an object", node_id=node_id
            )
        nodes[node_id] = (node_type, inputs, node_data.get("outputs") or {})
    return nodes


def _node_refs(
    node_id: str, node_type: str, inputs: Mapping[str, Any], types: Mapping[str, str]
) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """Return (reference inputs → node ids, every node id this node depends on)."""
    declared = NODE_TYPES[node_type]
    reader = InputReader(node_id, node_type, inputs)
    refs: dict[str, tuple[str, ...]] = {}
    depends: set[str] = set()
    for name, value in inputs.items():
        spec = declared.input_spec(name)
        if spec is not None and spec.is_ref:
            if is_empty(value):
                continue
            items = value if isinstance(value, list | tuple) else [value]
            found = [(full_ref(item) or "") if isinstance(item, str) else "" for item in items]
            if "" in found:
                raise reader.error(
                    name, f"must reference a node ({{{{id.data.instance}}}}): {value!r}"
                )
            refs[name] = tuple(found)
        else:
            found = [target for text in _strings(value) for target in embedded_refs(text)]
        for target in found:
            if target not in types:
                raise FlowValidationError(
                    f'{node_label(node_id, node_type)}: input "{name}" references node {target}, '
                    "which is not in the flow",
                    code="dangling_reference",
                    node_id=node_id,
                )
            accepts = spec.accepts if spec is not None and spec.is_ref else frozenset({CHAIN})
            if spec is not None and not NODE_TYPES[types[target]].kind & accepts:
                wanted = " or ".join(KIND_NAMES.get(kind, kind) for kind in sorted(accepts))
                raise reader.error(
                    name, f"must reference {wanted}, but {target} is a {types[target]}"
                )
            depends.add(target)
    return refs, depends


def _dependency_order(deps: Mapping[str, set[str]]) -> list[str]:
    """Return node ids so that every node comes after its dependencies; raise on a cycle."""
    remaining = {node_id: set(sources) for node_id, sources in deps.items()}
    order: list[str] = []
    ready = [node_id for node_id, sources in remaining.items() if not sources]
    while ready:
        node_id = ready.pop(0)
        order.append(node_id)
        for other, sources in remaining.items():
            if node_id in sources:
                sources.discard(node_id)
                if not sources and other not in order and other not in ready:
                    ready.append(other)
    stuck = [node_id for node_id in deps if node_id not in order]
    if stuck:
        raise FlowValidationError(
            f"Flow has a cycle through nodes {', '.join(stuck)}",
            code="flow_cycle",
            node_id=stuck[0],
        )
    return order


def _ending_node(nodes: Mapping[str, NodeSpec], consumed: set[str]) -> str:
    runnable = [node_id for node_id, node in nodes.items() if NODE_TYPES[node.type].runnable]
    candidates = [node_id for node_id in runnable if node_id not in consumed]
    if len(candidates) > 1:
        chains = [node_id for node_id in candidates if nodes[node_id].type in CHAIN_TYPES]
        if len(chains) != 1:
            raise FlowValidationError(
                f"Flow has several ending nodes ({', '.join(candidates)}); connect them so that "
                "exactly one chain is left without an outgoing edge",
                code="no_ending_node",
                node_id=candidates[0],
            )
        candidates = chains
    if not candidates:
        raise FlowValidationError(
            "Flow has no ending node (a chain that no edge leaves)", code="no_ending_node"
        )
    ending = nodes[candidates[0]]
    if ending.type not in CHAIN_TYPES:
        raise FlowValidationError(
            f"{ending.label} is the ending node, but a flow must end in a chain "
            f"({', '.join(sorted(CHAIN_TYPES))})",
            code="no_ending_node",
            node_id=ending.id,
        )
    return ending.id


def _ancestors(node_id: str, deps: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for source in deps[stack.pop()]:
            if source not in seen:
                seen.add(source)
                stack.append(source)
    return seen


def parse_flow(flow_data: str | bytes | Mapping[str, Any]) -> Flow:
    """Parse flowData (Flowise's JSON string, or a decoded dict) into a validated Flow.

    Raises FlowValidationError (code invalid_flow_json, unknown_node_type, dangling_reference,
    flow_cycle, no_ending_node, missing_input or invalid_flow) naming the node at fault.
    """
    data = _decode(flow_data)
    raw_nodes = _raw_nodes(data)
    types = {node_id: node_type for node_id, (node_type, _, _) in raw_nodes.items()}

    deps: dict[str, set[str]] = {node_id: set() for node_id in raw_nodes}
    consumed: set[str] = set()
    for index, edge in enumerate(data.get("edges", [])):
        source = edge.get("source") if isinstance(edge, Mapping) else None
        target = edge.get("target") if isinstance(edge, Mapping) else None
        if not isinstance(source, str) or not isinstance(target, str):
            raise FlowValidationError(f"edges[{index}] needs string source and target")
        for end in (source, target):
            if end not in raw_nodes:
                raise FlowValidationError(
                    f"edges[{index}] ({source} → {target}) names node {end}, "
                    "which is not in the flow",
                    code="dangling_reference",
                    node_id=end,
                )
        deps[target].add(source)
        consumed.add(source)

    nodes: dict[str, NodeSpec] = {}
    for node_id, (node_type, inputs, outputs) in raw_nodes.items():
        refs, depends = _node_refs(node_id, node_type, inputs, types)
        deps[node_id] |= depends
        consumed |= depends
        nodes[node_id] = NodeSpec(
            id=node_id,
            type=node_type,
            inputs=_freeze(inputs),
            outputs=_freeze(outputs),
            refs=MappingProxyType(refs),
        )

    order = _dependency_order(deps)
    ending_id = _ending_node(nodes, consumed)

    for node in nodes.values():
        declared = NODE_TYPES[node.type]
        reader = InputReader(node.id, node.type, node.inputs)
        for spec in declared.inputs:
            if spec.required and is_empty(node.inputs.get(spec.name)):
                raise reader.missing(spec.name)
        declared.check(node)

    needed = _ancestors(ending_id, deps) | {ending_id}
    ending = nodes[ending_id]
    model = nodes[ending.refs["model"][0]]
    memories = [node for node in nodes.values() if MEMORY in NODE_TYPES[node.type].kind]
    in_use = [node for node in memories if node.id in needed] or memories
    windows = [NODE_TYPES[node.type].window(node) for node in in_use]
    flow = Flow(
        nodes=MappingProxyType(nodes),
        order=tuple(node_id for node_id in order if node_id in needed),
        ending_node_id=ending_id,
        is_streaming=NODE_TYPES[model.type].streams(model),
        uses_memory=bool(memories),
        memory_window=None if not windows or None in windows else max(w or 0 for w in windows),
        memory_type=NODE_TYPES[in_use[0].type].label if in_use else None,
    )
    logger.debug("parsed flow: %d nodes, ending node %s", len(nodes), ending_id)
    return flow
