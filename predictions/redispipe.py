"""Redis commands pipelined automatically on one connection per event loop.

A prediction's event writes are small scripts, about ten a streaming prediction, from hundreds of
predictions at once. Through redis-py's asyncio client each cost 70-100 µs of CPU (a pool
checkout, a task for `wait_for` around the send, a timer for the read's timeout, a send and a
receive of its own); most of it per command, not per byte. A `CommandPipe` queues the commands
of a loop and sends all that are waiting in one write on one connection, then reads their
replies in order: 8-12 µs a command (`python -m bench.redis_writes`), with the replies and
errors each command would get from redis-py.

The connection is redis-py's own (`ConnectionPool.make_connection`: the URL, AUTH, TLS, the
database; or `connection_like` a sync client's), used through its public calls; it reconnects
at the next send after an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
from collections import deque
from typing import Any

import hiredis
import redis
import redis.asyncio.connection as aconnection
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command in Redis' protocol: hiredis' C packer (redis-py's asyncio connection packs in
    Python, a third of this module's CPU time)."""
    try:
        return hiredis.pack_command(args)
    except TypeError as exc:  # None, a bool…: redis-py's error for them
        raise DataError(f"{args[0]!r}: {exc}") from None


class CommandPipe:
    """Send the commands queued on this loop together, in the order they were queued.

    `execute` queues a command; awaiting what it returns gives the reply, or the error redis-py
    would raise (`ResponseError` for that command alone; a connection error or timeout for every
    command of the write it was in, which may or may not have run: as with redis-py, a caller
    that retries must cope with a command that landed). A caller cancelled while waiting does
    not take its command back: it is sent in its turn, so the commands of a loop reach Redis in
    the order they were queued.
    """

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        # Each entry: commands sent together (packed), how many, and the future of their last
        # reply (a transaction's EXEC) or first error.
        self._queue: deque[tuple[bytes, int, asyncio.Future[Any]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._shas: dict[str, str] = {}

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future is its reply."""
        return self._put([args])

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run `commands` in MULTI/EXEC; return their replies, or raise the first error among
        them (as redis-py's pipeline does)."""
        replies = await self._put([("MULTI",), *commands, ("EXEC",)])
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def run_script(self, source: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA `source`, loading it first when Redis does not have it (a restart flushed it)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", source)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    def _put(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[Any]:
        # Packed here: an argument Redis cannot take fails its own caller, now.
        packed = b"".join([_pack(args) for args in commands])
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((packed, len(commands), future))
        if self._sender is None:
            # Starts at the loop's next turn, with every command queued in this one.
            self._sender = loop.create_task(self._send_queued())
        return future

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                await self._round_trip(batch)
        except BaseException as exc:  # cancelled (the loop ends): so are the commands waiting
            for _, _, future in self._queue:
                future.cancel()
            self._queue.clear()
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("Redis command pipe failed")
            raise
        finally:
            self._sender = None

    async def _round_trip(self, batch: list[tuple[bytes, int, asyncio.Future[Any]]]) -> None:
        connection = self.connection
        done = 0
        try:
            # One timeout for the write and all its replies: redis-py's own, per reply, schedules
            # and cancels a timer each time.
            async with asyncio.timeout(connection.socket_timeout):
                await connection.send_packed_command(b"".join([packed for packed, _, _ in batch]))
                for _, count, future in batch:
                    error: ResponseError | None = None
                    for _ in range(count):
                        try:
                            reply = await connection.read_response(timeout=math.inf)
                        except ResponseError as exc:  # this command's error only
                            error = error or exc
                    if not future.done():
                        if error is not None:
                            future.set_exception(error)
                        else:
                            future.set_result(reply)
                    done += 1
        except BaseException as exc:
            # redis-py has closed the connection (it opens again at the next send): the
            # replies not read are lost, so their commands fail with the error.
            if type(exc) is TimeoutError:  # asyncio.timeout's, as redis-py would raise it
                exc = RedisTimeoutError("Timeout reading from Redis")
            for _, _, future in batch[done:]:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise


_ASYNC_CONNECTION_CLASSES: dict[type[Any], type[AbstractConnection]] = {
    redis.Connection: aconnection.Connection,
    redis.SSLConnection: aconnection.SSLConnection,
    redis.UnixDomainSocketConnection: aconnection.UnixDomainSocketConnection,
}
# Sync-only machinery among a sync pool's connection arguments: the async class has its own.
_NOT_CARRIED_OVER = frozenset({"retry", "parser_class", "redis_connect_func", "event_dispatcher"})


def connection_like(client: redis.Redis, retry: Retry) -> AbstractConnection:
    """An asyncio connection to the server, database and credentials of the sync `client`, with
    its timeouts and TLS settings (for the worker, whose rq connection is a sync client)."""
    pool = client.connection_pool
    async_class = _ASYNC_CONNECTION_CLASSES.get(pool.connection_class)
    if async_class is None:
        raise TypeError(f"no asyncio connection class for {pool.connection_class.__name__}")
    accepted: set[str] = set()
    for cls in async_class.__mro__:
        if "__init__" in cls.__dict__:
            accepted.update(inspect.signature(cls.__dict__["__init__"]).parameters)
    kwargs = {
        name: value
        for name, value in pool.connection_kwargs.items()
        # A bare object() is redis-py's "not given" marker.
        if name in accepted and name not in _NOT_CARRIED_OVER and type(value) is not object
    }
    return async_class(**kwargs, retry=retry)
