"""Real processes: a private redis-server, a PostgreSQL database, daphne web processes and
`manage.py rqworker` workers, each in its own session on free ports, killed in teardown."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _admin_dsn() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flowsite")
    if not url.startswith("postgres"):
        pytest.fail("e2e tests need PostgreSQL: set DATABASE_URL=postgres://… (make test does)")
    return url.rsplit("/", 1)[0] + "/postgres"


@dataclass
class Stack:
    """One deployment: shared Redis and database, any number of web and worker processes."""

    tmp: Path
    database_url: str
    redis_url: str
    mode: str = "queue"
    env_extra: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webs: list[str] = field(default_factory=list)
    workers: list[tuple[subprocess.Popen[bytes], int]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        # Real processes run with the production defaults (the test process's roomier pool stays
        # out: several servers at once could pass PostgreSQL's max_connections).
        dropped = ("REDIS_", "PYTEST", "DATABASE_POOL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "flowsite.settings",
                "MODE": self.mode,
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "FLOWSITE_HOME": str(self.tmp / "home"),
                "SECRET_KEY": "e2e-secret-key-0123456789abcdef0123456789",
                "LOG_LEVEL": "info",
                "OFFLINE_MODEL_TOKEN_DELAY_MS": "0",
                "WORKER_HEARTBEAT_SECONDS": "1",
                "SSE_HEARTBEAT_SECONDS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def manage(self, *args: str, **env: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def start_web(self, **env: str) -> str:
        port = free_port()
        name = f"web-{len(self.webs)}"
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "daphne",
                "-e",
                f"tcp:port={port}:interface=127.0.0.1:backlog=1024",  # as in the Procfile
                "flowsite.asgi:application",
            ],
            self.env(**env),
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(url + "/readyz"), 30, f"{name} ready")
        self.webs.append(url)
        return url

    def start_worker(self, **env: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        name = f"worker-{len(self.workers)}"
        process = self._spawn(
            name,
            [
                sys.executable,
                "manage.py",
                "rqworker",
                "--name",
                f"e2e-{name}-{uuid.uuid4().hex[:6]}",
            ],
            self.env(WORKER_PORT=str(port), **env),
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 30, f"{name} ready")
        self.workers.append((process, port))
        return process, port

    def create_chatflow(self, flow_data: str, **fields: Any) -> str:
        code = (
            "import django, json, sys; django.setup()\n"
            "from predictions import services\n"
            "data = json.loads(sys.stdin.read())\n"
            "print(services.chatflow_create(name='e2e', flow_data=data['flow'], "
            "**data['fields']).id)\n"
        )
        import json

        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=self.env(),
            input=json.dumps({"flow": flow_data, "fields": fields}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()[-1]

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port (faults tests may restart it)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_until(answers, 10, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait(5)


@pytest.fixture
def e2e_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = _admin_dsn()
    name = f"flowsite_e2e_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack(tmp_path: Path, redis_server: str, e2e_database: str, request) -> Iterator[Stack]:
    """A migrated queue-mode deployment with no processes yet; tests start what they need."""
    s = Stack(tmp=tmp_path, database_url=e2e_database, redis_url=redis_server)
    (tmp_path / "home").mkdir()
    s.manage("migrate", "--noinput", "-v0")
    yield s
    s.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for path in sorted(tmp_path.glob("*.log")):
            tail = path.read_text(errors="replace")[-4000:]
            sys.stderr.write(f"\n===== {path.name} =====\n{tail}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
