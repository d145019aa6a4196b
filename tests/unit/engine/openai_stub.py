"""An OpenAI-compatible chat completions server for tests, with scripted replies, on 127.0.0.1.

Also a pytest plugin: `pytest_plugins = ["tests.unit.engine.openai_stub"]` (or importing the
fixtures into a conftest) provides the `openai_stub` and `refused_base_url` fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = ("Hello", " from", " the", " stub", ".")


@dataclass(frozen=True)
class Reply:
    """How the stub answers one request; build one with the class methods."""

    kind: str = "ok"
    tokens: tuple[str, ...] = DEFAULT_TOKENS
    token_delay: float = 0.0
    delay: float = 0.0
    status: int = 200
    message: str = ""
    body: bytes = b""
    content_type: str = "application/json"
    newline: str = "\n"

    @classmethod
    def ok(
        cls,
        tokens: Iterable[str] = DEFAULT_TOKENS,
        *,
        token_delay: float = 0.0,
        delay: float = 0.0,
        newline: str = "\n",
    ) -> Reply:
        """Answer with `tokens`: SSE chunks if the request streams, else one JSON completion."""
        return cls("ok", tuple(tokens), token_delay=token_delay, delay=delay, newline=newline)

    @classmethod
    def error(cls, status: int, message: str = "stub error") -> Reply:
        """Answer HTTP `status` with an OpenAI-style {"error": {"message": ...}} body."""
        return cls("error", status=status, message=message)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Send nothing for `seconds` (client read timeouts), then close."""
        return cls("hang", delay=seconds)

    @classmethod
    def malformed(cls) -> Reply:
        """Stream one good chunk, then `data: {not json`."""
        return cls("malformed", tokens=("Hello",))

    @classmethod
    def drop(cls) -> Reply:
        """Close the connection without answering."""
        return cls("drop")

    @classmethod
    def raw(cls, status: int, body: bytes, content_type: str = "text/plain") -> Reply:
        """Answer exactly this status, body and content type."""
        return cls("raw", status=status, body=body, content_type=content_type)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received (header names lowercased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """Return the decoded JSON body."""
        return json.loads(self.body)


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    disconnects: int = 0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unused_base_url() -> str:
    """Return a base URL whose port refuses connections."""
    return f"http://127.0.0.1:{free_port()}/v1"


class OpenAIStub:
    """OpenAI-compatible server in a background thread (usable from sync and async tests).

    `script(...)` queues replies for the next requests; afterwards `default` answers. It records
    every request and counts clients that left before their response was complete.
    """

    def __init__(self, default: Reply | None = None, *, model_name: str = "stub-model"):
        self.default = default or Reply.ok()
        self.model_name = model_name
        self.port = 0
        self._state = _State()
        self._lock = threading.Lock()
        self._disconnected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return the base URL to put in a chatOpenAI node's `basepath`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIStub:
        """Start listening on a free port; return self."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="openai-stub", daemon=True
        )
        self._thread.start()
        if not ready.wait(5) or not self.port:
            raise RuntimeError("openai stub did not start")
        return self

    def stop(self) -> None:
        """Cancel in-flight replies, stop listening and join the thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> OpenAIStub:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- test API --------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order."""
        with self._lock:
            self._state.script.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return the requests received so far."""
        with self._lock:
            return list(self._state.requests)

    @property
    def last_request(self) -> RecordedRequest:
        """Return the most recent request."""
        return self.requests[-1]

    @property
    def disconnects(self) -> int:
        """Return how many clients left before their response was complete."""
        with self._lock:
            return self._state.disconnects

    def wait_for_disconnect(self, seconds: float) -> bool:
        """Block until a client leaves mid-response; False if none did within `seconds`."""
        return self._disconnected.wait(seconds)

    async def await_disconnect(self, seconds: float) -> bool:
        """Like wait_for_disconnect, without blocking the event loop."""
        return await asyncio.to_thread(self._disconnected.wait, seconds)

    # -- server ----------------------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        finally:
            ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._state.script.popleft() if self._state.script else self.default

    def _note_disconnect(self) -> None:
        with self._lock:
            self._state.disconnects += 1
        self._disconnected.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            with self._lock:
                self._state.requests.append(request)
            await self._respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._note_disconnect()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return RecordedRequest(method=method, path=path, headers=headers, body=body)

    async def _client_left(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait up to `seconds`; return True (and count it) if the client closed meanwhile."""
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=seconds)
        except TimeoutError:
            return False
        if data:
            return False  # a pipelined request: not a disconnect
        self._note_disconnect()
        return True

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} Stub\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def _respond(
        self,
        request: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if request.method == "GET" and request.path.endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model_name, "object": "model"}]}
            await self._send(writer, 200, json.dumps(models).encode(), "application/json")
            return
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            await self._send(
                writer, 404, b'{"error": {"message": "not found"}}', "application/json"
            )
            return
        reply = self._next_reply()
        if reply.delay and await self._client_left(reader, reply.delay):
            return
        if reply.kind in ("hang", "drop"):
            return
        if reply.kind == "error":
            error = {"error": {"message": reply.message, "type": "stub_error", "code": None}}
            await self._send(writer, reply.status, json.dumps(error).encode(), "application/json")
            return
        if reply.kind == "raw":
            await self._send(writer, reply.status, reply.body, reply.content_type)
            return
        try:
            streaming = bool(request.json.get("stream"))
        except ValueError:
            streaming = False
        if not streaming and reply.kind == "ok":
            await self._send(writer, 200, self._completion(reply), "application/json")
            return
        await self._stream(reply, reader, writer)

    def _completion(self, reply: Reply) -> bytes:
        message = {"role": "assistant", "content": "".join(reply.tokens)}
        return json.dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": self.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        ).encode()

    def _chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        return json.dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    async def _stream(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nl = reply.newline
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode())

        async def event(data: str) -> None:
            payload = f"data: {data}{nl}{nl}".encode()
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await writer.drain()

        await event(self._chunk({"role": "assistant", "content": ""}))
        for index, token in enumerate(reply.tokens):
            if index and reply.token_delay and await self._client_left(reader, reply.token_delay):
                return
            await event(self._chunk({"content": token}))
        if reply.kind == "malformed":
            await event("{not json")
        else:
            await event(self._chunk({}, "stop"))
            await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    """Yield a running OpenAI-compatible stub server (stopped after the test)."""
    with OpenAIStub() as stub:
        yield stub


@pytest.fixture
def refused_base_url() -> str:
    """Return a base URL on 127.0.0.1 where nothing listens."""
    return unused_base_url()
