"""Run a parsed Flow: build each node in dependency order, then ask the ending chain."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FlowValidationError
from .flow import Flow
from .nodes import NODE_TYPES, BuildContext, Chain, RunContext
from .overrides import flow_inputs
from .types import Emit, EngineConfig, RunInput, RunResult

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)


def new_http_session(config: EngineConfig, **kwargs: Any) -> aiohttp.ClientSession:
    """Return an HTTP session for model servers with `config`'s timeouts.

    HTTP(S)_PROXY, NO_PROXY and .netrc are honoured (`trust_env`), as they were by httpx,
    where the environment has any of them (`environment_has_proxies_or_netrc`).
    """
    import aiohttp  # here, not at the top: see openai_chat.transport_errors

    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )
    return aiohttp.ClientSession(
        timeout=timeout, trust_env=environment_has_proxies_or_netrc(), **kwargs
    )


def environment_has_proxies_or_netrc() -> bool:
    """Whether there is anything for aiohttp's `trust_env` to read: a `*_proxy` variable (any
    case) or a netrc file (NETRC, else ~/.netrc).

    With `trust_env` on, aiohttp looks up both on every request, each in a thread of its own
    (the netrc file read from disk each time): two thread hops per model request for nothing
    where neither exists.
    """
    if any(name.lower().endswith("_proxy") and value for name, value in os.environ.items()):
        return True
    netrc = os.environ.get("NETRC")
    try:
        return Path(netrc).is_file() if netrc else (Path.home() / ".netrc").is_file()
    except (OSError, RuntimeError):  # no home directory
        return False


class _HttpClient:
    """Hands out the caller's client, or one created on first use and closed after the run."""

    def __init__(self, client: aiohttp.ClientSession | None, config: EngineConfig):
        self._client = client
        self._owned: aiohttp.ClientSession | None = None
        self._config = config

    def __call__(self) -> aiohttp.ClientSession:
        if self._client is not None:
            return self._client
        if self._owned is None:
            self._owned = new_http_session(self._config)
        return self._owned

    async def aclose(self) -> None:
        if self._owned is not None:
            await self._owned.close()


async def run_flow(
    flow: Flow,
    inp: RunInput,
    *,
    emit: Emit | None,
    config: EngineConfig,
    http: aiohttp.ClientSession | None = None,
) -> RunResult:
    """Run `flow` for one question and return the answer.

    Streams the ending chain's tokens as `await emit("token", chunk)` when `flow.is_streaming`
    and `emit` is given; emits nothing else. With `emit=None` every model is asked for its
    whole answer in one response (cheaper than a stream nobody watches). Raises
    FlowValidationError, PromptError or ProviderError; cancellation propagates (and closes any
    open model response).
    """
    inputs = flow_inputs(flow, inp.overrides)
    instances: dict[str, Any] = {}
    texts: dict[str, str] = {}

    async def text_of(node_id: str) -> str:
        if node_id not in texts:
            instance = instances.get(node_id)
            if not isinstance(instance, Chain):
                node = flow.nodes[node_id]
                raise FlowValidationError(
                    f"{node.label} has no text output to use in a prompt", node_id=node_id
                )
            texts[node_id] = await instance.run(emit=None)
        return texts[node_id]

    client = _HttpClient(http, config)
    run = RunContext(
        question=inp.question,
        history=tuple(inp.history),
        chat_id=inp.chat_id,
        session_id=inp.session_id,
        config=config,
        http=client,
        text_of=text_of,
    )
    try:
        for node_id in flow.order:
            node = flow.nodes[node_id]
            ctx = BuildContext(node=node, inputs=inputs[node_id], instances=instances, run=run)
            instances[node_id] = await NODE_TYPES[node.type].build(ctx)
        ending: Chain = instances[flow.ending_node_id]
        text = await ending.run(emit=emit if flow.is_streaming else None)
    finally:
        await client.aclose()
    return RunResult(text=text, memory_type=flow.memory_type)
