"""Chat model client for OpenAI-compatible servers: POST {base}/chat/completions, JSON or SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ProviderError, node_label
from .types import Message

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

DETAIL_LIMIT = 200
# Compact UTF-8 JSON; one encoder, as json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# After `data: [DONE]`, how long the rest of a streamed body may take before it is dropped.
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class Timeout:
    """Seconds to get a connection (pooled or new), and that a response may go without data."""

    connect: float
    read: float

    def client_timeout(self) -> aiohttp.ClientTimeout:
        import aiohttp

        return aiohttp.ClientTimeout(
            total=None, connect=self.connect, sock_connect=self.connect, sock_read=self.read
        )


def transport_errors() -> tuple[type[BaseException], ...]:
    """Every failure of the exchange itself; aiohttp's timeouts are both ClientError and
    TimeoutError. (aiohttp is imported where a request is made: a web process in queue mode
    never makes one and is 7 MB smaller without it.)"""
    import aiohttp

    return (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class OpenAISettings:
    """One chatOpenAI node's request settings, already validated."""

    base_url: str
    api_key: str
    model: str
    timeout: Timeout
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    # For non-streaming calls (the answer comes whole); `timeout` when unset.
    complete_timeout: Timeout | None = None


class OpenAIChatModel:
    """A chat model on an OpenAI-compatible server; every failure becomes a ProviderError."""

    def __init__(
        self,
        *,
        node_id: str,
        node_type: str,
        settings: OpenAISettings,
        client: Callable[[], aiohttp.ClientSession],
    ):
        self.node_id = node_id
        self.node_type = node_type
        self.settings = settings
        self._client = client

    @property
    def url(self) -> str:
        """Return the chat completions endpoint."""
        return self.settings.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, messages: Sequence[Message], *, stream: bool) -> dict[str, Any]:
        """Return the JSON body for a chat completion request."""
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": [dict(m) for m in messages]}
        optional = {
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "top_p": s.top_p,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "stop": list(s.stop) or None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        body["stream"] = stream
        return body

    def request_content(self, messages: Sequence[Message], *, stream: bool) -> bytes:
        """Return the request body as sent (JSON, compact, UTF-8)."""
        body = self.request_body(messages, stream=stream)
        return _ENCODER.encode(body).encode()

    def request_headers(self, *, stream: bool) -> dict[str, str]:
        """Return extra headers (baseOptions), Accept, Content-Type, and Authorization when
        there is a key."""
        headers = dict(self.settings.headers)
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    async def complete(self, messages: Sequence[Message]) -> str:
        """Return the whole answer of one non-streaming request."""
        logger.debug("node %s: POST %s (non-streaming)", self.node_id, self.url)
        timeout = self.settings.complete_timeout or self.settings.timeout
        try:
            async with self._client().post(
                self.url,
                data=self.request_content(messages, stream=False),
                headers=self.request_headers(stream=False),
                timeout=timeout.client_timeout(),
            ) as response:
                status, body = response.status, await response.read()
        except transport_errors() as exc:
            raise self._transport_error(exc) from exc
        if status >= 400:
            raise self._status_error(status, body)
        try:
            data = json.loads(body)
        except ValueError:
            raise self._bad_response(
                f"answered HTTP {status} with a body that is not JSON"
            ) from None
        return self._message_content(data)

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Yield content chunks of one streaming request; closing the generator aborts it."""
        logger.debug("node %s: POST %s (streaming)", self.node_id, self.url)
        try:
            async with self._client().post(
                self.url,
                data=self.request_content(messages, stream=True),
                headers=self.request_headers(stream=True),
                timeout=self.settings.timeout.client_timeout(),
            ) as response:
                if response.status >= 400:
                    raise self._status_error(response.status, await response.read())
                if response.headers.get("Content-Type", "").startswith("application/json"):
                    # A server that ignores "stream": true answers with one JSON document.
                    try:
                        data = json.loads(await response.read())
                    except ValueError:
                        raise self._bad_response("answered with a body that is not JSON") from None
                    content = self._message_content(data)
                    if content:
                        yield content
                    return
                with _watched(response, self.settings.timeout.read) as watch:
                    lines = _lines(response.content, watch)
                    async for line in lines:
                        if not line.startswith("data:"):
                            continue  # blank separators, ": comments", event:/id:/retry: fields
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            break
                        delta = self._chunk_content(payload)
                        if delta:
                            yield delta
                    # Read the body to its end, so the connection goes back to the pool instead
                    # of being closed (a new TCP and TLS handshake for the next call); a server
                    # that keeps the stream open after [DONE] gets a moment, then is hung up on.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DRAIN_SECONDS):
                            async for _ in lines:
                                pass
        except transport_errors() as exc:
            raise self._transport_error(exc) from exc

    def _chunk_content(self, payload: str) -> str | None:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise self._bad_response(
                f"sent a malformed stream chunk: {payload[:DETAIL_LIMIT]!r}"
            ) from None
        if not isinstance(chunk, dict):
            raise self._bad_response(f"sent a stream chunk that is not an object: {payload!r}")
        if "error" in chunk:
            raise self._bad_response(f"sent an error in the stream: {self._detail(chunk)}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise self._bad_response("sent a stream chunk without choices")
        if not choices:
            return None  # e.g. the final usage chunk
        first = choices[0] if isinstance(choices[0], dict) else {}
        delta = first.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else None

    def _message_content(self, data: Any) -> str:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._bad_response("answered without choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self._bad_response("answered without a message in choices[0]")
        content = message.get("content")
        return content if isinstance(content, str) else ""

    def _where(self) -> str:
        return f"{node_label(self.node_id, self.node_type)}: model server {self.settings.base_url}"

    def _redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key else text

    def _bad_response(self, problem: str) -> ProviderError:
        return ProviderError(
            self._redact(f"{self._where()} {problem}"),
            code="provider_bad_response",
            node_id=self.node_id,
        )

    def _detail(self, data: Any) -> str:
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or error
        text = error if isinstance(error, str) else json.dumps(error)
        return text[:DETAIL_LIMIT]

    def _status_error(self, status: int, body: bytes) -> ProviderError:
        try:
            detail = self._detail(json.loads(body))
        except ValueError:
            detail = body.decode("utf-8", "replace").strip()[:DETAIL_LIMIT]
        if status in (401, 403):
            code, what = "provider_unauthorized", "rejected the API key"
        elif status == 429:
            code, what = "provider_rate_limited", "is rate limiting requests"
        else:
            code, what = "provider_bad_response", "failed"
        message = f"{self._where()} {what}: HTTP {status}"
        if detail:
            message += f": {detail}"
        return ProviderError(self._redact(message), code=code, node_id=self.node_id)

    def _transport_error(self, exc: Exception) -> ProviderError:
        import aiohttp

        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            code = "provider_timeout"
            problem = f"did not accept a connection within {self.settings.timeout.connect}s"
        elif isinstance(exc, TimeoutError):
            code = "provider_timeout"
            problem = f"sent nothing for {self.settings.timeout.read}s (read timeout)"
        elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
            code, problem = "provider_unreachable", f"is not a valid http(s) URL ({exc})"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            code, problem = "provider_unreachable", f"is unreachable ({exc or 'connect failed'})"
        else:
            code = "provider_bad_response"
            problem = f"broke the connection ({type(exc).__name__}: {exc})"
        return ProviderError(
            self._redact(f"{self._where()} {problem}"), code=code, node_id=self.node_id
        )


async def _lines(content: aiohttp.StreamReader, watch: _Watch) -> AsyncIterator[str]:
    """Yield the lines of a response body as they arrive, without their ends (CR, LF, CRLF)."""
    pending = b""
    loop = asyncio.get_running_loop()
    async for chunk in content.iter_any():
        watch.last_data = loop.time()
        if not chunk:
            continue
        lines = (pending + chunk).splitlines(keepends=True)
        pending = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


# --- the read timeout of streamed bodies ----------------------------------------------------


@dataclass(eq=False)
class _Watch:
    response: aiohttp.ClientResponse
    read: float
    last_data: float


class _ReadTimeouts:
    """The read timeout of an event loop's streamed responses, checked for all at once.

    aiohttp's `sock_read` timeout cancels a timer and starts another at every chunk a response
    receives: a token of a streamed answer, each a cancelled TimerHandle left in the loop's heap
    (about 3 % of the worker's CPU per streaming prediction at C=50, measured back to back). Once a
    stream's headers are in (under `sock_read`, as every request), its chunks only note when
    they came, and one task of the loop looks at the streams a few times per read timeout: a
    stream that sent nothing for its read timeout gets the error aiohttp's timeout gives (a
    TimeoutError in its read), a little later than aiohttp would (at most a quarter of the
    timeout, or a second).
    """

    def __init__(self) -> None:
        self.watches: set[_Watch] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, watch: _Watch) -> None:
        self.watches.add(watch)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._check())

    def remove(self, watch: _Watch) -> None:
        self.watches.discard(watch)
        if not self.watches and self.task is not None:
            self.task.cancel()  # nothing left to check: no task left behind either
            self.task = None

    async def _check(self) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        while self.watches:
            await asyncio.sleep(min(1.0, min(watch.read for watch in self.watches) / 4))
            now = loop.time()
            for watch in [w for w in self.watches if now - w.last_data >= w.read]:
                self.watches.discard(watch)
                watch.response.content.set_exception(
                    aiohttp.SocketTimeoutError("Timeout on reading data from socket")
                )
                watch.response.close()


_read_timeouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReadTimeouts] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def _watched(response: aiohttp.ClientResponse, read: float):
    """Hand the read timeout of `response`'s body from aiohttp to the loop's _ReadTimeouts."""
    loop = asyncio.get_running_loop()
    if not read or response.connection is None:
        yield _Watch(response, read, loop.time())  # nothing to time: aiohttp's, if any
        return
    response.connection.protocol.read_timeout = None  # no timer per chunk from here on
    timeouts = _read_timeouts.get(loop)
    if timeouts is None:
        timeouts = _read_timeouts[loop] = _ReadTimeouts()
    watch = _Watch(response, read, loop.time())
    timeouts.add(watch)
    try:
        yield watch
    finally:
        timeouts.remove(watch)
