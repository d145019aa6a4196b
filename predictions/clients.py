"""Shared network clients: Redis (sync, and asyncio per loop) and model HTTP clients per loop."""

from __future__ import annotations

import asyncio
import functools
import itertools
import ssl
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
    weakref.WeakKeyDictionary()
)
_sync_client: redis.Redis | None = None
_http_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HttpShards] = (
    weakref.WeakKeyDictionary()
)


# redis-py's own retries of a command whose connection broke: short, so that a request fails
# fast (503) while Redis is away; the worker's side of a prediction waits longer by itself.
REDIS_RETRIES = 3
REDIS_RETRY_BASE, REDIS_RETRY_CAP = 0.05, 0.5


def _redis_kwargs(retry_class: type[Retry] | type[AsyncRetry]) -> dict[str, Any]:
    kwargs = settings.REDIS.client_kwargs()
    # Explicit: with redis-py's default policy an asyncio transaction on a connection that a
    # Redis restart broke fails instead of reconnecting (once per pooled connection).
    backoff = ExponentialWithJitterBackoff(base=REDIS_RETRY_BASE, cap=REDIS_RETRY_CAP)
    kwargs["retry"] = retry_class(backoff, REDIS_RETRIES)
    return kwargs


def get_async_redis() -> aredis.Redis:
    """Return the asyncio client of the running loop (clients are bound to the loop they run on)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # A bounded pool that waits for a free connection: redis-py's default pool refuses a
        # command outright ("Too many connections") once 100 are in use, which a worker with
        # hundreds of predictions in flight reaches at every burst of token writes.
        pool = aredis.BlockingConnectionPool.from_url(
            settings.REDIS.url,
            max_connections=settings.REDIS.max_connections,
            timeout=settings.REDIS.socket_timeout,
            **_redis_kwargs(AsyncRetry),
        )
        client = aredis.Redis.from_pool(pool)
        _async_clients[loop] = client
    return client


def get_sync_redis() -> redis.Redis:
    """Return the process's sync client (redis-py pools are thread-safe)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS.url, **_redis_kwargs(Retry))
    return _sync_client


# httpcore's pool walks all of its connections and waiting requests on every request and
# response: with hundreds of predictions in flight through one client that costs milliseconds
# of CPU each. Predictions are spread over this many clients (each its own small pool) instead.
HTTP_CLIENT_SHARDS = 16


@dataclass
class _HttpShards:
    clients: list[httpx.AsyncClient]
    turns: itertools.count = field(default_factory=itertools.count)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context (CA bundle loaded once, ~40 ms) for every client: a client that makes
    its own would make a worker's first prediction wait over half a second for 16 of them."""
    return httpx.create_ssl_context()


def get_http_client() -> httpx.AsyncClient:
    """Return an HTTP client for model servers: one of the running loop's few, in turn."""
    loop = asyncio.get_running_loop()
    shards = _http_clients.get(loop)
    if shards is None:
        timeout = httpx.Timeout(settings.LLM_READ_TIMEOUT, connect=settings.LLM_CONNECT_TIMEOUT)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
        verify = _ssl_context()
        shards = _HttpShards(
            [
                httpx.AsyncClient(timeout=timeout, limits=limits, verify=verify)
                for _ in range(HTTP_CLIENT_SHARDS)
            ]
        )
        _http_clients[loop] = shards
    return shards.clients[next(shards.turns) % len(shards.clients)]


def reset_clients() -> None:
    """Forget every client (tests point settings at another Redis)."""
    global _sync_client
    _sync_client = None
    _async_clients.clear()
    _http_clients.clear()
