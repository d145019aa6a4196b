"""Shared network clients: Redis (sync, and asyncio per loop) and a model HTTP session per loop."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import ssl
import weakref
from typing import TYPE_CHECKING, Any

import certifi
import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from predictions.engine import EngineConfig
from predictions.engine.runner import new_http_session
from predictions.redispipe import CommandPipe

if TYPE_CHECKING:
    import aiohttp

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
    weakref.WeakKeyDictionary()
)
_sync_client: redis.Redis | None = None
_pipes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CommandPipe] = (
    weakref.WeakKeyDictionary()
)
_http_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
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


def get_command_pipe() -> CommandPipe:
    """Return the running loop's pipelined connection (for event writes: see `CommandPipe`)."""
    loop = asyncio.get_running_loop()
    pipe = _pipes.get(loop)
    if pipe is None:
        # A pipe's connection holds its loop, so a closed loop's entry never leaves the weak
        # dictionary by itself (async_to_sync makes a loop per call: the worker's lost-job sweep).
        for closed in [other for other in _pipes if other.is_closed()]:
            del _pipes[closed]
        pool = aredis.ConnectionPool.from_url(settings.REDIS.url, **_redis_kwargs(AsyncRetry))
        pipe = _pipes[loop] = CommandPipe(pool.make_connection())
    return pipe


def get_sync_redis() -> redis.Redis:
    """Return the process's sync client (redis-py pools are thread-safe)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS.url, **_redis_kwargs(Retry))
    return _sync_client


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context (CA bundle loaded once, ~40 ms) for every model connection: certifi's
    bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


def get_http_client() -> aiohttp.ClientSession:
    """Return the running loop's HTTP session for model servers.

    aiohttp, not httpx: a model request cost httpx and httpcore 2.6 ms of CPU (non-streaming;
    3.3 ms streamed), aiohttp 0.1 and 0.2 ms (bench/README.md), and one pool serves any number
    of predictions at once.
    """
    import aiohttp  # here, not at the top: see openai_chat.transport_errors

    loop = asyncio.get_running_loop()
    session = _http_clients.get(loop)
    if session is None or session.closed:
        config = EngineConfig(
            connect_timeout=settings.LLM_CONNECT_TIMEOUT, read_timeout=settings.LLM_READ_TIMEOUT
        )
        connector = aiohttp.TCPConnector(limit=0, ssl=_ssl_context())
        session = new_http_session(config, connector=connector)
        _http_clients[loop] = session
    return session


@atexit.register
def _close_http_clients_at_exit() -> None:
    """Close the sessions of loops that stopped without closing them (daphne's): aiohttp logs
    an error for every session it finds open when the process ends."""
    for loop, session in list(_http_clients.items()):
        if not session.closed and not loop.is_closed() and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(session.close())


async def aclose_http_client() -> None:
    """Close the running loop's HTTP session, if it has one (before the loop closes)."""
    session = _http_clients.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def reset_clients() -> None:
    """Forget every client (tests point settings at another Redis)."""
    global _sync_client
    _sync_client = None
    _async_clients.clear()
    _pipes.clear()
    _http_clients.clear()
