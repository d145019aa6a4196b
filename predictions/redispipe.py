"""Redis commands pipelined automatically on one connection per event loop.

A prediction's event writes are small scripts, about ten a streaming prediction, from hundreds of
predictions at once. Through redis-py's asyncio client each costs ~65 µs of CPU (a pool
checkout, a task for `wait_for` around the send, a timeout context around the read, its own
send and receive calls); most of it is per command, not per byte. A `CommandPipe` queues the
commands of a loop and sends all that are waiting in one write on one connection, then reads
their replies in order: ~18 µs a command (`bench/redis_writes.py`), with the replies and errors
each command would get from redis-py.

The connection is redis-py's own (`ConnectionPool.make_connection`: the URL, AUTH, TLS, the
database), used through its public calls; it reconnects at the next send after an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

logger = logging.getLogger(__name__)


class CommandPipe:
    """Send the commands queued on this loop together, in the order they were queued.

    `execute` queues a command and returns once its reply is read: a reply, or the error redis-py
    would raise (`ResponseError` for that command alone; a connection error or timeout for every
    command of the write it was in, which may or may not have run: as with redis-py, a caller
    that retries must cope with a command that landed). A caller cancelled while waiting does
    not take its command back: it is sent in its turn, so the commands of a loop reach Redis in
    the order they were queued.
    """

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self._queue: deque[tuple[tuple[Any, ...], asyncio.Future[Any]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._shas: dict[str, str] = {}

    async def execute(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((args, future))
        if self._sender is None:
            # Starts at the loop's next turn, with every command queued in this one.
            self._sender = loop.create_task(self._send_queued())
        return await future

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

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                await self._round_trip(batch)
        except BaseException as exc:  # cancelled (the loop ends): so are the commands waiting
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("Redis command pipe failed")
            raise
        finally:
            self._sender = None

    async def _round_trip(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        connection = self.connection
        done = 0
        try:
            await connection.send_packed_command(
                connection.pack_commands([args for args, _ in batch])
            )
            for _, future in batch:
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:  # this command's error; the connection is fine
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(reply)
                done += 1
        except BaseException as exc:
            # redis-py has closed the connection (it opens again at the next send): the
            # replies not read are lost, so their commands fail with the error.
            for _, future in batch[done:]:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
