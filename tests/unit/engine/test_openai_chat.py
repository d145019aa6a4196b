"""Tests for chatOpenAI over real HTTP against the stub: streaming, headers, errors, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestServer

from predictions.engine import EngineConfig, ProviderError, RunInput, parse_flow, run_flow
from predictions.engine.openai_chat import OpenAIChatModel, OpenAISettings, Timeout

from .flows import Recorder, flow_json, llm_chain, openai, prompt
from .openai_stub import OpenAIStub, Reply

CONFIG = EngineConfig(read_timeout=5, connect_timeout=2)
SECRET = "sk-test-secret-key-123"


def chat_flow(base_url: str, **openai_inputs: Any) -> str:
    return flow_json(
        [
            openai(base_url=base_url, **openai_inputs),
            prompt(),
            llm_chain(model="chatOpenAI_0", prompt_id="promptTemplate_0"),
        ]
    )


async def run(flow_data: str, config: EngineConfig = CONFIG, **kw: Any) -> tuple[Any, Recorder]:
    recorder = Recorder()
    result = await run_flow(
        parse_flow(flow_data), RunInput("hi"), emit=recorder, config=config, **kw
    )
    return result, recorder


async def test_chat_openai_streams_tokens_in_order(openai_stub: OpenAIStub) -> None:
    tokens = [f"t{i} " for i in range(20)]
    openai_stub.script(Reply.ok(tokens, token_delay=0.005))

    result, recorder = await run(chat_flow(openai_stub.base_url))

    assert recorder.tokens == tokens
    assert result.text == "".join(tokens)
    assert openai_stub.last_request.json["stream"] is True


async def test_chat_openai_tolerates_crlf_event_stream(openai_stub: OpenAIStub) -> None:
    openai_stub.script(Reply.ok(["a", "b"], newline="\r\n"))

    result, recorder = await run(chat_flow(openai_stub.base_url))

    assert recorder.tokens == ["a", "b"]
    assert result.text == "ab"


async def test_chat_openai_non_streaming_emits_nothing(openai_stub: OpenAIStub) -> None:
    result, recorder = await run(chat_flow(openai_stub.base_url, streaming="false"))

    assert result.text == "Hello from the stub."
    assert recorder.events == []
    assert openai_stub.last_request.json["stream"] is False


async def test_chat_openai_sends_node_settings(openai_stub: OpenAIStub) -> None:
    flow_data = chat_flow(
        openai_stub.base_url + "/",
        modelName="llama3",
        temperature="0.3",
        maxTokens="64",
        topP=0.9,
        frequencyPenalty="",
        stopSequence="END, STOP",
        baseOptions='{"X-Team": "flowsite"}',
    )

    await run(flow_data)

    request = openai_stub.last_request
    assert request.path == "/v1/chat/completions"
    assert request.json == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": ["END", "STOP"],
        "stream": True,
    }
    assert request.headers["x-team"] == "flowsite"


async def test_chat_openai_uses_node_key(openai_stub: OpenAIStub) -> None:
    config = EngineConfig(openai_api_key="sk-fallback", read_timeout=5)

    await run(chat_flow(openai_stub.base_url, openAIApiKey="sk-node"), config)

    assert openai_stub.last_request.headers["authorization"] == "Bearer sk-node"


async def test_chat_openai_falls_back_to_config_key(openai_stub: OpenAIStub) -> None:
    config = EngineConfig(openai_api_key="sk-fallback", read_timeout=5)

    await run(chat_flow(openai_stub.base_url, credential="some-credential-id"), config)

    assert openai_stub.last_request.headers["authorization"] == "Bearer sk-fallback"


async def test_chat_openai_sends_no_authorization_without_key(openai_stub: OpenAIStub) -> None:
    await run(chat_flow(openai_stub.base_url))

    assert "authorization" not in openai_stub.last_request.headers


async def test_chat_openai_uses_config_base_url_when_basepath_empty(
    openai_stub: OpenAIStub,
) -> None:
    config = EngineConfig(openai_base_url=openai_stub.base_url, read_timeout=5)

    result, _ = await run(chat_flow(""), config)

    assert result.text == "Hello from the stub."


async def test_chat_openai_uses_given_http_client_and_leaves_it_open(
    openai_stub: OpenAIStub,
) -> None:
    async with aiohttp.ClientSession() as client:
        await run(chat_flow(openai_stub.base_url), http=client)
        await run(chat_flow(openai_stub.base_url), http=client)

        assert not client.closed
    assert len(openai_stub.requests) == 2


@pytest.mark.parametrize(
    ("reply", "streaming", "code"),
    [
        (Reply.error(401, "bad key"), True, "provider_unauthorized"),
        (Reply.error(403, "forbidden"), False, "provider_unauthorized"),
        (Reply.error(429, "slow down"), True, "provider_rate_limited"),
        (Reply.error(429, "slow down"), False, "provider_rate_limited"),
        (Reply.error(500, "boom"), True, "provider_bad_response"),
        (Reply.error(503, "down"), False, "provider_bad_response"),
        (Reply.malformed(), True, "provider_bad_response"),
        (Reply.drop(), True, "provider_bad_response"),
        (Reply.raw(200, b"<html>not json</html>", "text/html"), False, "provider_bad_response"),
        (
            Reply.raw(200, b'{"object": "chat.completion"}', "application/json"),
            False,
            "provider_bad_response",
        ),
        (
            Reply.raw(200, b'data: {"id": 1}\n\n', "text/event-stream"),
            True,
            "provider_bad_response",
        ),
    ],
)
async def test_chat_openai_maps_server_failures(
    openai_stub: OpenAIStub, reply: Reply, streaming: bool, code: str
) -> None:
    openai_stub.script(reply)
    config = EngineConfig(openai_api_key=SECRET, read_timeout=5)

    with pytest.raises(ProviderError) as info:
        await run(chat_flow(openai_stub.base_url, streaming=streaming), config)

    error = info.value
    assert error.code == code
    assert error.http_status == 502
    assert error.node_id == "chatOpenAI_0"
    assert openai_stub.base_url in error.message
    assert "chatOpenAI_0" in error.message
    assert SECRET not in error.message
    if reply.kind == "error":
        assert f"HTTP {reply.status}" in error.message


async def test_chat_openai_error_never_shows_the_key(openai_stub: OpenAIStub) -> None:
    openai_stub.script(Reply.error(401, f"Incorrect API key provided: {SECRET}"))

    with pytest.raises(ProviderError) as info:
        await run(chat_flow(openai_stub.base_url, openAIApiKey=SECRET))

    assert SECRET not in str(info.value)
    assert "Incorrect API key provided" in str(info.value)


@pytest.mark.parametrize("streaming", [True, False])
async def test_chat_openai_connection_refused_is_unreachable(
    refused_base_url: str, streaming: bool
) -> None:
    with pytest.raises(ProviderError) as info:
        await run(chat_flow(refused_base_url, streaming=streaming))

    assert info.value.code == "provider_unreachable"
    assert info.value.http_status == 502
    assert refused_base_url in info.value.message


@pytest.mark.parametrize("streaming", [True, False])
async def test_chat_openai_read_timeout_is_provider_timeout(
    openai_stub: OpenAIStub, streaming: bool
) -> None:
    openai_stub.script(Reply.hang(3))
    started = time.monotonic()

    with pytest.raises(ProviderError) as info:
        await run(chat_flow(openai_stub.base_url, streaming=streaming, timeout="200"))

    assert info.value.code == "provider_timeout"
    assert info.value.http_status == 504
    assert time.monotonic() - started < 2


async def test_chat_openai_stalled_stream_is_provider_timeout(openai_stub: OpenAIStub) -> None:
    openai_stub.script(Reply.ok(["a", "b"], token_delay=3))
    config = EngineConfig(read_timeout=0.2)

    with pytest.raises(ProviderError) as info:
        await run(chat_flow(openai_stub.base_url), config)

    assert info.value.code == "provider_timeout"


async def test_chat_openai_connect_timeout_is_provider_timeout() -> None:
    model = OpenAIChatModel(
        node_id="chatOpenAI_0",
        node_type="chatOpenAI",
        settings=OpenAISettings(
            base_url="http://10.255.255.1/v1", api_key="", model="m", timeout=Timeout(1, 1)
        ),
        client=aiohttp.ClientSession,
    )

    error = model._transport_error(aiohttp.ConnectionTimeoutError("timed out"))

    assert (error.code, error.http_status) == ("provider_timeout", 504)


async def test_cancelling_run_closes_the_model_connection(openai_stub: OpenAIStub) -> None:
    openai_stub.script(Reply.ok([f"t{i} " for i in range(200)], token_delay=0.02))
    got_tokens = asyncio.Event()
    tokens: list[str] = []

    async def emit(event: str, data: Any) -> None:
        tokens.append(data)
        if len(tokens) == 3:
            got_tokens.set()

    flow = parse_flow(chat_flow(openai_stub.base_url))
    task = asyncio.create_task(run_flow(flow, RunInput("hi"), emit=emit, config=CONFIG))
    await asyncio.wait_for(got_tokens.wait(), 2)
    cancelled_at = time.monotonic()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert await openai_stub.await_disconnect(1)
    assert time.monotonic() - cancelled_at < 0.5
    assert openai_stub.disconnects == 1
    assert len(tokens) < 200


def _model(client: aiohttp.ClientSession, base_url: str, read: float = 5) -> OpenAIChatModel:
    settings = OpenAISettings(base_url=base_url, api_key="k", model="m", timeout=Timeout(5, read))
    return OpenAIChatModel(
        node_id="n", node_type="chatOpenAI", settings=settings, client=lambda: client
    )


@contextlib.asynccontextmanager
async def _served(completions: Any, read: float = 5) -> AsyncIterator[OpenAIChatModel]:
    """A model whose server answers chat completions with `completions` (a real HTTP server)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as client:
        yield _model(client, str(server.make_url("/v1")), read)


async def _stream_body(request: web.Request, *chunks: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    return response


def _chunk(content: str) -> bytes:
    return b'data: {"choices": [{"delta": {"content": "%s"}}]}\n\n' % content.encode()


@pytest.fixture
def aiohttp_read_timers(monkeypatch) -> list[float | None]:
    """The read timeout aiohttp's protocol had each time it restarted its read timer (a timer
    started when not None), and -1.0 where such a timer went off."""
    restarts: list[float | None] = []
    restart, timer_went_off = ResponseHandler._reschedule_timeout, ResponseHandler._on_read_timeout

    def recorded(self: ResponseHandler) -> None:
        restarts.append(self.read_timeout)
        restart(self)

    def went_off(self: ResponseHandler) -> None:
        restarts.append(-1.0)
        timer_went_off(self)

    monkeypatch.setattr(ResponseHandler, "_reschedule_timeout", recorded)
    monkeypatch.setattr(ResponseHandler, "_on_read_timeout", went_off)
    return restarts


async def test_chat_openai_stream_that_stalls_mid_body_is_provider_timeout(
    aiohttp_read_timers,
) -> None:
    release = asyncio.Event()

    async def completions(request: web.Request) -> web.StreamResponse:
        response = await _stream_body(request, _chunk("a"))
        await asyncio.sleep(0.1)
        await response.write(_chunk("b"))
        await release.wait()  # then nothing
        return response

    chunks: list[str] = []
    stalled_at = 0.0

    async def read(model: OpenAIChatModel) -> None:
        nonlocal stalled_at
        async for chunk in model.stream([{"role": "user", "content": "x"}]):
            chunks.append(chunk)
            stalled_at = time.monotonic()

    async with _served(completions, read=0.3) as model:
        try:
            with pytest.raises(ProviderError) as info:
                await asyncio.wait_for(read(model), 5)
        finally:
            release.set()
    waited = time.monotonic() - stalled_at

    assert chunks == ["a", "b"]
    assert (info.value.code, info.value.http_status) == ("provider_timeout", 504)
    assert "sent nothing for 0.3s (read timeout)" in info.value.message
    assert 0.3 <= waited < 2
    assert -1.0 not in aiohttp_read_timers  # ended by the loop's check, not an aiohttp timer


async def test_chat_openai_stream_with_gaps_shorter_than_its_read_timeout_is_read_whole(
    aiohttp_read_timers,
) -> None:
    async def completions(request: web.Request) -> web.StreamResponse:
        response = await _stream_body(request)
        for index in range(8):  # 0.8 s in all, more than the read timeout; 0.1 s between
            await response.write(_chunk(f"t{index}"))
            await asyncio.sleep(0.1)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with _served(completions, read=0.5) as model:
        chunks = [chunk async for chunk in model.stream([{"role": "user", "content": "x"}])]

    assert chunks == [f"t{index}" for index in range(8)]
    # aiohttp's timer ran until the headers came; none was started for the chunks after them.
    started = [timeout for timeout in aiohttp_read_timers if timeout is not None]
    assert started
    assert len(started) <= 2
    assert aiohttp_read_timers.count(None) >= 7


async def test_chat_openai_stream_reads_the_body_to_its_end_for_reuse() -> None:
    peers: list[Any] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response = await _stream_body(
            request,
            b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
            b"data: [DONE]\n\n",
            b"\n",  # what a server may still send after [DONE]: read, not left on the socket
        )
        await response.write_eof()
        return response

    async with _served(completions) as model:
        question = [{"role": "user", "content": "x"}]
        first = [chunk async for chunk in model.stream(question)]
        second = [chunk async for chunk in model.stream(question)]

    assert first == second == ["a"]
    assert len(peers) == 2
    assert peers[0] == peers[1]  # the second request reused the first one's connection


async def test_chat_openai_stream_hangs_up_on_a_body_that_never_ends(monkeypatch) -> None:
    monkeypatch.setattr("predictions.engine.openai_chat.DRAIN_SECONDS", 0.1)
    release = asyncio.Event()

    async def completions(request: web.Request) -> web.StreamResponse:
        response = await _stream_body(
            request, b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n'
        )
        await release.wait()  # nothing more, never closed (until the test ends)
        return response

    async with _served(completions) as model:
        try:
            async with asyncio.timeout(5):
                chunks = [chunk async for chunk in model.stream([{"role": "user", "content": "x"}])]
        finally:
            release.set()

    assert chunks == ["a"]


async def test_chat_openai_stream_joins_lines_split_across_reads() -> None:
    async def completions(request: web.Request) -> web.StreamResponse:
        # A line cut in the middle of a UTF-8 character, a CR at the end of one read and its
        # LF at the start of the next, and a last line without an end.
        event = 'data: {"choices": [{"delta": {"content": "h\u00e9"}}]}'.encode()
        cut = event.index(b"\xc3") + 1
        response = await _stream_body(
            request,
            event[:cut],
            event[cut:] + b"\r",
            b"\n\r\n",
            b'data: {"choices": [{"delta": {"content": "!"}}]}\n\n',
            b"data: [DONE]",
        )
        await response.write_eof()
        return response

    async with _served(completions) as model:
        chunks = [chunk async for chunk in model.stream([{"role": "user", "content": "x"}])]

    assert chunks == ["hé", "!"]
