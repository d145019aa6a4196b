"""Fixtures of the worker tests: a reserved, empty Redis database, queues, workers, processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis import Redis
from rq import Queue

from predictions.worker import ConcurrentWorker
from tests.integration.worker.helpers import PROJECT_ROOT


def _test_redis_url() -> str:
    """FLOWSITE_TEST_REDIS_URL, else database 14 of the REDIS_URL server (reserved, flushed)."""
    explicit = os.environ.get("FLOWSITE_TEST_REDIS_URL")
    if explicit:
        return explicit
    server = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit(server._replace(path="/14"))


REDIS_URL = _test_redis_url()
QUEUE_NAME = "worker-test"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Check once that the reserved test database is empty, and refuse to run if it isn't."""
    connection = Redis.from_url(REDIS_URL)
    try:
        keys = connection.dbsize()
    finally:
        connection.close()
    if keys:
        pytest.exit(
            f"Refusing to run: the Redis test database {REDIS_URL} holds {keys} keys. It is "
            "flushed by these tests; empty it or set FLOWSITE_TEST_REDIS_URL to an empty one.",
            returncode=4,
        )
    return REDIS_URL


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    """A connection to the test database, flushed before and after the test."""
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def queue(redis_conn: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis_conn)


@pytest.fixture
def make_worker(redis_conn: Redis, queue: Queue) -> Callable[..., ConcurrentWorker]:
    """Build an in-process worker on `queue` with fast test settings, overridable."""

    def make(**overrides: Any) -> ConcurrentWorker:
        options: dict[str, Any] = {
            "concurrency": 10,
            "heartbeat_interval": 1,
            "shutdown_timeout": 5,
            "health_port": 0,
        }
        options.update(overrides)
        return ConcurrentWorker([queue], connection=redis_conn, **options)

    return make


@pytest.fixture
def spawn_worker(redis_url: str, redis_conn: Redis, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start worker processes (own session, log in tmp_path); kill their groups afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(*, name: str, **options: Any) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "tests.integration.worker.runner",
            "--redis-url",
            redis_url,
            "--queue",
            QUEUE_NAME,
            "--name",
            name,
        ]
        for key, value in options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
