"""Marks each test by its folder; shared fixtures: API clients, chatflows, Redis, queue mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.unit.engine.openai_stub"]

_TIERS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "browser": "browser",
    "faults": "e2e",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        try:
            tier = Path(item.fspath).relative_to(root).parts[0]
        except ValueError:
            continue
        marker = _TIERS.get(tier)
        if marker:
            item.add_marker(getattr(pytest.mark, marker))


# --- flows -------------------------------------------------------------------------------------


def offline_flow(
    *,
    memory: bool = True,
    tokens: int | None = None,
    delay_ms: int | None = None,
    reply: str | None = None,
) -> str:
    """Return flowData: chat prompt + offline model (+ buffer memory) + conversation chain."""
    from tests.unit.engine.flows import flow_json, node, offline, ref

    model_inputs: dict[str, Any] = {}
    if tokens is not None:
        model_inputs["tokens"] = tokens
    if delay_ms is not None:
        model_inputs["tokenDelayMs"] = delay_ms
    if reply is not None:
        model_inputs["reply"] = reply
    nodes = [
        offline("chatOfflineModel_0", **model_inputs),
        node(
            "conversationChain_0",
            "conversationChain",
            model=ref("chatOfflineModel_0"),
            memory=ref("bufferMemory_0") if memory else "",
            systemMessagePrompt="You are a test.",
        ),
    ]
    if memory:
        nodes.append(node("bufferMemory_0", "bufferMemory", sessionId="", memoryKey="chat_history"))
    return flow_json(nodes)


@pytest.fixture
def make_chatflow(db):
    from predictions import services

    def make(**kwargs: Any):
        kwargs.setdefault("name", "test flow")
        kwargs.setdefault("flow_data", offline_flow())
        return services.chatflow_create(**kwargs)

    return make


@pytest.fixture
def staff_user(db, django_user_model):
    return django_user_model.objects.create_user("staff", "s@example.com", "pw", is_staff=True)


@pytest.fixture
def example_flow_data() -> str:
    data = Path(__file__).parent / "unit" / "engine" / "data" / "flowise-prompt-llmchain.json"
    return json.loads(data.read_text())["flowData"]


# --- Redis and queue mode ----------------------------------------------------------------------


@pytest.fixture
def redis_db(settings) -> Iterator[Any]:
    """The test Redis database: refused when not empty at start, flushed before and after."""
    import redis

    cfg = settings.REDIS
    client = redis.Redis.from_url(cfg.url, **cfg.client_kwargs())
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {cfg.url} is not reachable ({exc}); `make test` starts one.")
    if client.dbsize():
        pytest.fail(f"Redis database {cfg.url} is not empty; tests refuse to flush foreign data.")
    yield client
    client.flushdb()
    client.close()


def _reset_runtime() -> None:
    from channels.layers import channel_layers

    from predictions import clients, events, selectors, services

    channel_layers.backends = {}
    events.reset_transport()
    clients.reset_clients()
    selectors.chatflows_forget_all()
    services.flows_forget_all()


@pytest.fixture
def queue_mode(settings, redis_db):
    """Switch this test to MODE=queue with the Redis channel layer."""
    settings.MODE = "queue"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [settings.REDIS.channel_host()], "prefix": "flowsite.test"},
        }
    }
    _reset_runtime()
    yield redis_db
    _reset_runtime()


@pytest.fixture(autouse=True)
def _fresh_runtime():
    _reset_runtime()
    yield
    _reset_runtime()
    _close_thread_connections()


def _close_thread_connections() -> None:
    """Close the database connection of asgiref's sync_to_async thread after each test.

    Async views and services run their ORM calls there; an open connection would keep
    pytest-django from dropping the test database at the end.
    """
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
