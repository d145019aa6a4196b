"""Browser tests: Playwright for Python driving the system Chromium against the e2e stack.

The page talks to the web process through a TCP relay, so a test can cut the network (every
connection dropped, new ones refused) and point the same address at a restarted web process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.e2e import conftest as e2e
from tests.e2e.conftest import Stack

# The e2e stack's fixtures and report hook, reused as they are.
redis_server = e2e.redis_server
e2e_database = e2e.e2e_database
stack = e2e.stack
pytest_runtest_makereport = e2e.pytest_runtest_makereport

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
IGNORED_CONSOLE = ("WebSocket connection to", "Failed to load resource")


class TcpRelay:
    """Forward 127.0.0.1:<port> to a web process; `cut()` is a network outage, `restore()` not."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = True
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._sockets.discard(sock)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore()`."""
        self.up = False
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._drop(sock)

    def restore(self, upstream_port: int | None = None) -> None:
        if upstream_port is not None:
            self.upstream_port = upstream_port
        self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()


@dataclass
class ChatSite:
    """A running deployment in one mode, reached through a relay at `url`."""

    stack: Stack
    relay: TcpRelay
    web_port: int
    web_process: Any
    screenshots: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.relay.port}"

    @property
    def mode(self) -> str:
        return self.stack.mode

    def create_chatflow(self, flow_data: str, **fields: Any) -> str:
        fields.setdefault("is_public", True)
        return self.stack.create_chatflow(flow_data, **fields)

    def kill_web(self) -> None:
        """Kill the web process (SIGKILL); the relay refuses connections until `start_web()`."""
        self.relay.cut()
        os.killpg(self.web_process.pid, signal.SIGKILL)
        self.web_process.wait(10)

    def start_web(self) -> None:
        """Serve the same address from a new web process."""
        self.web_port, self.web_process = _start_web(self.stack)
        self.relay.restore(self.web_port)


def _start_web(stack: Stack) -> tuple[int, Any]:
    url = stack.start_web()
    return int(url.rsplit(":", 1)[1]), stack.processes[-1]


@pytest.fixture(params=["main", "queue"])
def site(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[ChatSite]:
    """The chat served by a daphne web process (and, in queue mode, one rqworker)."""
    stack.mode = request.param
    port, process = _start_web(stack)
    if stack.mode == "queue":
        stack.start_worker()
    relay = TcpRelay(port)
    screenshots = Path(os.environ.get("FLOWSITE_SCREENSHOTS", tmp_path / "screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    yield ChatSite(stack, relay, port, process, screenshots)
    relay.close()


@pytest.fixture
def main_site(stack: Stack, tmp_path: Path) -> Iterator[ChatSite]:
    """The chat in main mode only (tests whose behaviour does not depend on the mode)."""
    stack.mode = "main"
    port, process = _start_web(stack)
    relay = TcpRelay(port)
    yield ChatSite(stack, relay, port, process, tmp_path)
    relay.close()


@pytest.fixture
def queue_site(stack: Stack, tmp_path: Path) -> Iterator[ChatSite]:
    stack.mode = "queue"
    port, process = _start_web(stack)
    stack.start_worker()
    relay = TcpRelay(port)
    yield ChatSite(stack, relay, port, process, tmp_path)
    relay.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (own localStorage); fails the test on any JavaScript error."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def console(message: ConsoleMessage) -> None:
        # Chromium logs dropped WebSockets and 4xx pages itself; anything else is our bug.
        if message.type == "error" and not message.text.startswith(IGNORED_CONSOLE):
            errors.append(message.text)

    page.on("console", console)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
