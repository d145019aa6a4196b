"""The worker's database threads: its jobs' ORM calls, on a few threads with a connection each.

Outside a request asgiref runs every thread-sensitive call on one process-wide thread, so a
worker's hundreds of concurrent jobs queued for it one round trip at a time: at 100
predictions/s that thread, not the CPU, capped the worker (about 25 % more predictions/s in the
bench with eight). The rqworker command starts them (WORKER_DATABASE_THREADS); without them (a
ConcurrentWorker started some other way, main mode) calls go where asgiref sends them.
Each call must be whole on its own (one transaction at most), as `services.aretry_database`'s
are: consecutive calls of one job may run on different threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT_SECONDS = 10.0

_pool: ThreadPoolExecutor | None = None
_size = 0


def start(threads: int) -> None:
    """Run `database_call`s on `threads` threads from now on (0: as asgiref does)."""
    global _pool, _size
    stop()
    if threads > 0:
        _pool, _size = ThreadPoolExecutor(threads, thread_name_prefix="database"), threads


def database_call(fn: Callable[..., T]) -> Callable[..., Any]:
    """`fn` as a coroutine function, run on a database thread (asgiref's, when none started).

    On the started threads it is a plain `run_in_executor`: Django keeps connections per thread
    (not per context), and the calls need nothing else of asgiref's, whose per-call wrapper and
    context copies cost more than the thread hop itself.
    """
    pool = _pool
    if pool is None:
        return sync_to_async(fn)

    async def call(*args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    return call


def stop() -> None:
    """Close each thread's database connections (back to the pool), then end the threads."""
    global _pool, _size
    pool, size, _pool, _size = _pool, _size, None, 0
    if pool is None:
        return
    # One close per thread: each waits at the barrier until all have closed, so that no
    # thread takes two while another takes none (and all `size` threads get started).
    closed = threading.Barrier(size, timeout=CLOSE_TIMEOUT_SECONDS)

    def close() -> None:
        try:
            connections.close_all()
        finally:
            closed.wait()

    futures = [pool.submit(close) for _ in range(size)]
    for future in futures:
        try:
            future.result(CLOSE_TIMEOUT_SECONDS + 1)
        except Exception as exc:  # a broken barrier, a failed close: the process ends anyway
            logger.warning("closing the database threads' connections: %r", exc)
    pool.shutdown(wait=True)


def size() -> int:
    return _size
