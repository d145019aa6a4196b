"""The benchmark's load generator counts an answer ok only when it is whole and right."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bench.loadgen import close_clients, new_clients, run_load

EXPECTED = "tok0 tok1 "
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler on 127.0.0.1 at /api/v1/prediction/flow; give its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/prediction/flow", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/api/v1/prediction/flow"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _load(url: str, *, streaming: bool, requests: int = 4, concurrency: int = 2):
    clients = new_clients(concurrency)
    try:
        return await run_load(
            clients, url, requests=requests, streaming=streaming, expected=EXPECTED
        )
    finally:
        await close_clients(clients)


def _answer(text: str, chat_id: str | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({"text": text, "chatId": chat_id or body["chatId"]})

    return handler


def _reply(status: int, text: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text)

    return handler


def _stream(*frames: dict) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:  # one write each, as the server flushes them
            await response.write(f"message:\ndata:{json.dumps(frame)}\n\n".encode())
        await response.write_eof()
        return response

    return handler


START = {"event": "start", "data": ""}
TOKENS = [{"event": "token", "data": "tok0 "}, {"event": "token", "data": "tok1 "}]
METADATA = {"event": "metadata", "data": {"chatId": "c"}}
END = {"event": "end", "data": "[DONE]"}


async def test_right_answers_are_ok_each_request_with_its_own_chat_id(serve) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body["chatId"])
        return web.json_response({"text": EXPECTED, "chatId": body["chatId"]})

    result = await _load(await serve(handler), streaming=False, requests=6)

    assert [s.ok for s in result.samples] == [True] * 6
    assert len(set(seen)) == 6
    assert all(s.latency > 0 for s in result.samples)


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (_answer("tok0 "), "wrong text: 'tok0 '"),
        (_answer(EXPECTED, chat_id="another"), "wrong chatId: 'another'"),
        (_reply(503, "queue full"), "HTTP 503: queue full"),
        (_reply(200, "<html>"), "body is not JSON: <html>"),
    ],
)
async def test_wrong_answers_are_errors_with_what_was_wrong(serve, handler, error) -> None:
    result = await _load(await serve(handler), streaming=False)

    assert result.errors == 4
    assert result.error_summary() == [f"4 x {error}"]


async def test_a_whole_stream_is_ok_and_times_its_first_token(serve) -> None:
    result = await _load(await serve(_stream(START, *TOKENS, METADATA, END)), streaming=True)

    assert [s.ok for s in result.samples] == [True] * 4
    assert all(0 < s.ttft <= s.latency for s in result.samples)


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ((START, *TOKENS, METADATA), "stream ended after 'metadata' without end"),
        ((START, TOKENS[0], METADATA, END), "tokens joined differ: 'tok0 '"),
        ((START, *TOKENS, END), "no metadata event"),
        ((*TOKENS, METADATA, END), "first event is token, not start"),
        (
            (START, {"event": "error", "data": "model down"}, END),
            "error event: model down",
        ),
    ],
)
async def test_a_broken_stream_is_an_error_with_what_broke(serve, frames, error) -> None:
    result = await _load(await serve(_stream(*frames)), streaming=True)

    assert result.error_summary() == [f"4 x {error}"]


async def test_a_stream_answered_as_json_is_an_error(serve) -> None:
    result = await _load(await serve(_answer(EXPECTED)), streaming=True)

    assert result.errors == 4
    assert all(s.error.startswith("not SSE (application/json") for s in result.samples)


async def test_a_refused_connection_is_an_error(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/api/v1/prediction/flow"

    result = await _load(url, streaming=False, requests=2)

    assert result.errors == 2
    assert "ClientConnectorError" in result.samples[0].error
