"""Django's ASGI handler, with each request's thread-sensitive work on a reused thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# Idle request threads kept for the next requests; more are ended as their requests finish.
IDLE_THREADS_KEPT = 64


class RequestThreads:
    """Single-thread executors lent to one request at a time.

    Django gives every request a ThreadSensitiveContext of its own: its ORM calls, sync
    middleware and signal receivers run on one thread, started for the request and joined (from
    yet another thread) when it ends. That was two thread starts per prediction request, about
    a twentieth of the web process's CPU. Lending each request an executor that served an
    earlier one keeps the one-thread-per-request rule without the starts.
    """

    def __init__(self, idle_kept: int = IDLE_THREADS_KEPT) -> None:
        self.idle_kept = idle_kept
        self._idle: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    def acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self.idle_kept:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)  # its thread ends once its last call returns

    @property
    def idle(self) -> int:
        return len(self._idle)


class PooledThreadsASGIHandler(ASGIHandler):
    """ASGIHandler whose requests borrow their thread from `RequestThreads`.

    As with Django's handler, a task a request starts must not call thread-sensitive code
    after the request ended: start it in a context of its own (`contextvars.Context()`).
    """

    def __init__(self, threads: RequestThreads | None = None) -> None:
        super().__init__()
        self.threads = threads or RequestThreads()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.release(executor)
