"""Reach the worker's event loop from other threads: calls, replies, and its signal handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LoopBridge:
    """The worker's loop as seen from the pubsub thread, helper threads and the app."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread_id = threading.get_ident()
        self._previous_handlers: dict[int, Any] = {}

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Schedule `fn(*args)` on the loop from any thread; False once the loop is closed."""
        if self.loop.is_closed():
            return False
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    def call(self, fn: Callable[..., T], *args: Any, timeout: float) -> T | None:
        """Run `fn(*args)` on the loop and return its result; None if it can't within `timeout`."""
        if threading.get_ident() == self.thread_id and self.loop.is_running():
            return fn(*args)
        reply: Future[T] = Future()

        def run() -> None:
            try:
                reply.set_result(fn(*args))
            except Exception as exc:  # re-raised in the calling thread by reply.result()
                reply.set_exception(exc)

        if not self.call_soon(run):
            return None
        try:
            return reply.result(timeout=timeout)
        except TimeoutError:
            return None

    def install_signal_handlers(self, handler: Callable[[int], None]) -> bool:
        """Route SIGTERM and SIGINT to `handler(signum)` on the loop; False off the main thread."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            try:
                self.loop.add_signal_handler(signum, handler, signum)
            except (ValueError, RuntimeError, NotImplementedError):
                # Not the main thread (an embedded or test worker): its owner stops it instead.
                return False
            self._previous_handlers[signum] = previous
        return True

    def remove_signal_handlers(self) -> None:
        """Give the signals back to the handlers they had before."""
        for signum, previous in self._previous_handlers.items():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.remove_signal_handler(signum)
            signal.signal(signum, previous)
        self._previous_handlers.clear()
