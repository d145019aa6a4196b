"""A fast OpenAI-compatible mock chat model for benchmarks.

    python -m bench.mock_llm --port 18999 --tokens 20 --delay-ms 10

`POST /v1/chat/completions` answers `tok0 tok1 … tok{N-1} ` (N = `--tokens`):

- with `"stream": true`, as server-sent events over chunked transfer encoding, one
  `data: {"choices":[{"delta":{"content":"tok0 "}}]}` chunk per token, each sent `--delay-ms`
  after the previous one (the first `--delay-ms` after the request), then `data: [DONE]`;
- otherwise, after N x `--delay-ms`, as one JSON completion
  `{"choices":[{"message":{"role":"assistant","content":"tok0 …"}}]}`.

`GET /healthz` answers `ok`; `GET /stats` the counters as JSON (`requests`, `streamed`,
`accepted` connections, …). Written directly on `asyncio.Protocol` with timer callbacks (no task
per request, no framework), HTTP/1.1 keep-alive and pipelining, so that one process serves
thousands of requests per second (0.1-0.5 ms of CPU per request) and is never the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
}


@dataclass
class MockConfig:
    """What every completion answers, and the counters of what was served."""

    tokens: int = 20
    delay: float = 0.010
    requests: int = 0
    streamed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    connections: int = 0
    accepted: int = 0
    started: float = field(default_factory=time.time)
    _cache: dict[str, tuple[bytes, list[bytes], bytes]] = field(default_factory=dict)

    def words(self) -> list[str]:
        """Return the tokens, in order."""
        return [f"tok{i} " for i in range(self.tokens)]

    def rendered(self, model: str) -> tuple[bytes, list[bytes], bytes]:
        """Return (JSON body, SSE token chunks, SSE tail chunks) for `model`, built once."""
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        created = int(self.started)
        words = self.words()
        body = json.dumps(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(words),
                    "total_tokens": len(words) + 1,
                },
            },
            separators=(",", ":"),
        ).encode()
        chunks = []
        for index, word in enumerate(words):
            delta: dict[str, str] = {"content": word}
            if index == 0:
                delta = {"role": "assistant", "content": word}
            chunks.append(_sse_chunk(_completion_chunk(created, model, delta, None)))
        tail = _sse_chunk(_completion_chunk(created, model, {}, "stop"))
        tail += _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        if len(self._cache) < 64:
            self._cache[model] = (body, chunks, tail)
        return body, chunks, tail

    def stats(self) -> dict[str, Any]:
        """Return the counters."""
        return {
            "tokens": self.tokens,
            "delay_ms": self.delay * 1000,
            "requests": self.requests,
            "streamed": self.streamed,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "connections": self.connections,
            "accepted": self.accepted,
        }


def _completion_chunk(created: int, model: str, delta: dict[str, str], finish: str | None) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        },
        separators=(",", ":"),
    )


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse_chunk(data: str) -> bytes:
    return _http_chunk(b"data: " + data.encode() + b"\n\n")


def _head(status: int, content_type: str, extra: str, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Connection: {connection}\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


class MockLLMProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each with timer callbacks."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.config.connections += 1
        self.config.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.config.connections -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.config.in_flight -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    # --- requests ----------------------------------------------------------------------------

    def _next_request(self) -> None:
        """Start answering the next complete request in the buffer, if there is one."""
        if self.closed or self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._simple(413, b"request head too large", keep_alive=False)
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._simple(400, b"bad request line", keep_alive=False)
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._simple(411, b"send Content-Length", keep_alive=False)
            return
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._simple(400, b"bad Content-Length", keep_alive=False)
            return
        if length > MAX_BODY_BYTES:
            self._simple(413, b"body too large", keep_alive=False)
            return
        if len(self.buffer) < end + 4 + length:
            return  # wait for the rest of the body
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        self.busy = True
        self._dispatch(method, target.split("?", 1)[0], body, keep_alive)

    def _dispatch(self, method: str, path: str, body: bytes, keep_alive: bool) -> None:
        if path.endswith("/chat/completions"):
            if method != "POST":
                self._simple(405, b"use POST", keep_alive)
                return
            try:
                request = json.loads(body) if body else {}
            except ValueError:
                self._simple(400, b'{"error":{"message":"malformed JSON"}}', keep_alive)
                return
            if not isinstance(request, dict):
                request = {}
            model = request.get("model")
            self._completion(
                model if isinstance(model, str) else "mock",
                request.get("stream") is True,
                keep_alive,
            )
        elif path == "/healthz" and method in ("GET", "HEAD"):
            self._simple(200, b"ok", keep_alive, "text/plain")
        elif path == "/stats" and method == "GET":
            self._simple(200, json.dumps(self.config.stats()).encode(), keep_alive)
        else:
            self._simple(404, b'{"error":{"message":"not found"}}', keep_alive)

    def _simple(
        self,
        status: int,
        body: bytes,
        keep_alive: bool,
        content_type: str = "application/json",
    ) -> None:
        assert self.transport is not None
        head = _head(status, content_type, f"Content-Length: {len(body)}\r\n", keep_alive)
        self.transport.write(head + body)
        self._done(keep_alive)

    def _done(self, keep_alive: bool) -> None:
        self.busy = False
        if not keep_alive:
            assert self.transport is not None
            self.transport.close()
            self.closed = True
            return
        if self.buffer:
            self._next_request()

    # --- completions -------------------------------------------------------------------------

    def _completion(self, model: str, stream: bool, keep_alive: bool) -> None:
        config = self.config
        config.requests += 1
        config.in_flight += 1
        config.peak_in_flight = max(config.peak_in_flight, config.in_flight)
        body, chunks, tail = config.rendered(model)
        assert self.transport is not None
        if not stream:
            answer = (
                _head(200, "application/json", f"Content-Length: {len(body)}\r\n", keep_alive)
                + body
            )
            wait = config.delay * config.tokens
            if wait <= 0:
                self._finish(answer, keep_alive)
            else:
                self.timer = self.loop.call_later(wait, self._finish, answer, keep_alive)
            return
        config.streamed += 1
        head = _head(
            200,
            "text/event-stream",
            "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n",
            keep_alive,
        )
        if config.delay <= 0:
            self._finish(head + b"".join(chunks) + tail, keep_alive)
            return
        self.transport.write(head)
        start = self.loop.time()
        self.timer = self.loop.call_at(
            start + config.delay, self._stream_step, chunks, tail, 0, start, keep_alive
        )

    def _stream_step(
        self, chunks: list[bytes], tail: bytes, index: int, start: float, keep_alive: bool
    ) -> None:
        assert self.transport is not None
        if index + 1 >= len(chunks):
            self._finish(chunks[index] + tail if chunks else tail, keep_alive)
            return
        self.transport.write(chunks[index])
        # Token i is due at start + (i + 1) x delay; a late callback does not delay the rest.
        due = max(start + (index + 2) * self.config.delay, self.loop.time())
        self.timer = self.loop.call_at(
            due, self._stream_step, chunks, tail, index + 1, start, keep_alive
        )

    def _finish(self, data: bytes, keep_alive: bool) -> None:
        self.timer = None
        self.config.in_flight -= 1
        if self.closed:
            return
        assert self.transport is not None
        self.transport.write(data)
        self._done(keep_alive)


async def serve(host: str, port: int, config: MockConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockLLMProtocol(config), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()
    print(
        f"mock LLM on http://{bound[0]}:{bound[1]}/v1 "
        f"({config.tokens} tokens, {config.delay * 1000:g} ms each)",
        flush=True,
    )
    async with server:
        await stop.wait()
    print(f"mock LLM stopped: {json.dumps(config.stats())}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18999)
    parser.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="delay before each token")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.delay_ms < 0:
        parser.error("--tokens must be at least 1 and --delay-ms not negative")
    config = MockConfig(tokens=args.tokens, delay=args.delay_ms / 1000)
    asyncio.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
