"""Helpers for the worker tests: polling with a deadline, a worker in a thread, HTTP probes."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from predictions.worker import ConcurrentWorker

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class WorkerThread:
    """Run `worker.work(**options)` in a thread and report what it returned or raised."""

    def __init__(self, worker: ConcurrentWorker, **options: Any) -> None:
        self.worker = worker
        self.options = options
        self.result: bool | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.worker.work(**self.options)
        except BaseException as exc:  # reported to the test by join()
            self.error = exc

    def join(self, timeout: float = 30) -> bool | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


@contextmanager
def running(worker: ConcurrentWorker, **options: Any) -> Iterator[WorkerThread]:
    """Run the worker in a thread for the block; stop it (forcefully) if the block fails."""
    runner = WorkerThread(worker, **options)
    runner.thread.start()
    wait_until(lambda: worker.loop is not None and worker.loop.is_running(), 10, "worker loop")
    try:
        yield runner
    except BaseException:
        worker.request_shutdown(force=True)
        runner.thread.join(15)
        raise


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET http://127.0.0.1:<port><path> and return (status, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()
