"""Fault injection on real processes: the e2e Stack, a restartable Redis with AOF persistence, a
private PostgreSQL cluster, and clients and probes that record what every prediction went through.

Fixtures come from tests/e2e/conftest.py; `redis_server` is overridden here so that every fault
test runs on a Redis it may stop and start again without losing data (appendonly yes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from predictions.streaming import decode_event, stream_key
from tests.e2e.conftest import (  # noqa: F401 - fixtures and the report hook, reused as they are
    Stack,
    e2e_database,
    free_port,
    http_ok,
    pytest_runtest_makereport,
    wait_until,
)
from tests.e2e.conftest import stack as stack  # the fixture (its name is a parameter below)

# Short heartbeats and timeouts keep the suite fast: abandoned jobs are detected within
# heartbeat_ttl (3 s) + interval (1 s) = 4 s; a web reader gives up 30 + 3 s after it started.
FAULT_ENV = {
    "WORKER_HEARTBEAT_SECONDS": "1",
    "SSE_HEARTBEAT_SECONDS": "2",
    "PREDICTION_TIMEOUT": "30",
    "PREDICTION_TIMEOUT_MARGIN": "3",
    "WORKER_SHUTDOWN_TIMEOUT": "3",
    "REDIS_CONNECT_TIMEOUT": "1",
}
ABANDONED_JOB_BOUND = 3 + 1


# --- Redis that can be restarted ----------------------------------------------------------------


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private redis-server with AOF persistence on a fixed port, to stop and start again."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.folder),
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: _answers(self.port), 10, "redis-server")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: a clean shutdown that flushes the AOF, like a service restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def redis_server(redis_proc: RedisServer) -> str:
    """Overrides the e2e fixture: the Stack uses the restartable, persistent Redis."""
    return redis_proc.url


@pytest.fixture
def fault_stack(stack: Stack) -> Stack:
    stack.env_extra.update(FAULT_ENV)
    return stack


# --- a private PostgreSQL cluster (never stop the shared one) -----------------------------------


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return candidates[-1].parent


def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@dataclass
class PgCluster:
    """A throw-away PostgreSQL cluster on a free port, socket in its own folder."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres(str(_pg_bin() / "pg_ctl"), "-D", str(self.data), *args),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        subprocess.run(
            _as_postgres(
                str(_pg_bin() / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", str(self.folder / "pg.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    folder = Path(tempfile.mkdtemp(prefix="flowsite-faults-pg-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    cluster = PgCluster(folder)
    cluster.init()
    cluster.start()
    yield cluster
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        cluster.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


# --- probes: the database and the event streams, read directly ----------------------------------


def predictions(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every prediction row by chat id (each client uses its own chat id)."""
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT id, chat_id, status, error_code, attempts, worker_name, result, started_at,"
            " finished_at FROM predictions_prediction"
        )
        names = [column.name for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["id"] = str(row["id"])
    return {row["chat_id"]: row for row in rows}


def message_counts(stack: Stack) -> Counter[tuple[str, str]]:
    """(prediction id, role) -> number of chat messages."""
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT prediction_id, role FROM predictions_chatmessage").fetchall()
    return Counter((str(pid), role) for pid, role in rows)


def stream(redis_url: str, prediction_id: str) -> list[dict[str, Any]]:
    """A prediction's events as stored in its Redis Stream, as clients get them (the `end` of a
    success also keeps its result there, which is never sent)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        events = [decode_event(i, f) for i, f in client.xrange(stream_key(prediction_id))]
        return [{k: v for k, v in event.items() if k != "result"} for event in events]
    finally:
        client.close()


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in events]


def assert_answered_in_full(
    stack: Stack, outcome: Any, row: dict[str, Any], counts: Counter[tuple[str, str]], expected: str
) -> list[str]:
    """Assert an accepted prediction was answered in full, once; return its stream's events."""
    assert outcome.status == 200, outcome
    assert row["status"] == "succeeded", row
    events = names(stream(stack.redis_url, row["id"]))
    assert events[-2:] == ["metadata", "end"]
    if outcome.streaming:
        assert outcome.events[-2:] == ["metadata", "end"]
        assert outcome.text == expected
    else:
        assert outcome.body["text"] == expected
    assert counts[(row["id"], "userMessage")] == counts[(row["id"], "apiMessage")] == 1
    return events


def assert_no_duplicate_messages(stack: Stack) -> None:
    counts = message_counts(stack)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1]


def worker_name(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["worker"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(predicate, timeout, what)


async def await_for(predicate: Callable[[], Any], limit: float, what: str) -> Any:
    """Wait for `predicate` (a blocking probe) in a thread, up to `limit` seconds."""
    return await asyncio.to_thread(wait_until, predicate, limit, what)


# --- clients --------------------------------------------------------------------------------------


def parse_sse(raw: str) -> list[dict[str, Any]]:
    frames = []
    for block in raw.split("\n\n"):
        lines = block.split("\n")
        data = [line[5:] for line in lines if line.startswith("data:")]
        ids = [line[3:] for line in lines if line.startswith("id:")]
        if data:
            frames.append({"seq": int(ids[0]), **json.loads(data[0])})
    return frames


@dataclass
class Outcome:
    """What one client saw: HTTP status, the JSON body or the SSE frames, and how long it took."""

    chat_id: str
    streaming: bool
    started: float = 0.0
    ended: float = 0.0
    status: int | None = None
    body: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    prediction_id: str | None = None
    transport_error: str | None = None
    frame_times: list[float] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    @property
    def events(self) -> list[str]:
        return [frame["event"] for frame in self.frames]

    @property
    def text(self) -> str:
        return "".join(f["data"] for f in self.frames if f["event"] == "token")


async def ask(
    client: httpx.AsyncClient,
    web: str,
    chatflow_id: str,
    chat_id: str,
    *,
    streaming: bool = False,
    question: str = "hello",
    on_frame: Callable[[Outcome], None] | None = None,
    admission: asyncio.Semaphore | None = None,
) -> Outcome:
    """POST a prediction and record everything the client sees, never raising.

    `admission` limits how many requests are being created at once (held until the response
    headers arrive): under ASGI each request being created holds a database connection.
    """
    outcome = Outcome(chat_id=chat_id, streaming=streaming, started=time.monotonic())
    body = {"question": question, "chatId": chat_id, "streaming": streaming}
    admitted = admission is not None
    if admission is not None:
        await admission.acquire()
    try:
        async with client.stream(
            "POST", f"{web}/api/v1/prediction/{chatflow_id}", json=body
        ) as response:
            if admission is not None:
                admission.release()
                admitted = False
            outcome.status = response.status_code
            outcome.prediction_id = response.headers.get("x-prediction-id")
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                await _read_sse(response, outcome, on_frame)
            else:
                outcome.body = json.loads(await response.aread())
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        outcome.transport_error = f"{type(exc).__name__}: {exc}"
    finally:
        if admission is not None and admitted:
            admission.release()
    outcome.ended = time.monotonic()
    return outcome


async def attach(
    client: httpx.AsyncClient,
    web: str,
    prediction_id: str,
    *,
    after_seq: int = 0,
    chat_id: str = "",
    on_frame: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """GET a prediction's events (SSE) from `after_seq`, recording what arrives."""
    outcome = Outcome(chat_id=chat_id, streaming=True, started=time.monotonic())
    outcome.prediction_id = prediction_id
    try:
        async with client.stream(
            "GET",
            f"{web}/api/v1/predictions/{prediction_id}/events",
            headers={"Last-Event-ID": str(after_seq)},
        ) as response:
            outcome.status = response.status_code
            await _read_sse(response, outcome, on_frame)
    except httpx.HTTPError as exc:
        outcome.transport_error = f"{type(exc).__name__}: {exc}"
    outcome.ended = time.monotonic()
    return outcome


async def _read_sse(
    response: httpx.Response, outcome: Outcome, on_frame: Callable[[Outcome], None] | None
) -> None:
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            frames = parse_sse(block + "\n\n")
            if frames:
                outcome.frames.extend(frames)
                outcome.frame_times.extend([time.monotonic()] * len(frames))
                if on_frame is not None:
                    on_frame(outcome)


def ready_status(url: str) -> int | None:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture
def measure(record_property) -> Callable[..., None]:
    """Record measured figures: as test properties, and appended to $FAULTS_MEASUREMENTS."""
    target = os.environ.get("FAULTS_MEASUREMENTS")

    def record(name: str, **values: Any) -> None:
        record_property(name, values)
        if target:
            with open(target, "a") as fh:
                fh.write(json.dumps({"measure": name, **values}, default=str) + "\n")

    return record
