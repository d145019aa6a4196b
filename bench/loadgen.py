"""The load generator: N predictions at concurrency C over aiohttp, each one validated.

Every prediction uses a new chatId, so the chatflow's memory starts empty (Flowise's benchmark
emptied it before each row). Non-streaming predictions must answer 200 with `text` equal to the
mock model's tokens joined; streaming ones must be `text/event-stream` with `start`, every token
(joined, equal to the expected text), `metadata` and `end` last, and no `error`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

REQUEST_TIMEOUT_SECONDS = 330.0  # PREDICTION_TIMEOUT (300) + its margin + slack
ERROR_SAMPLES = 5


@dataclass
class Sample:
    """One prediction as the client saw it."""

    ok: bool
    latency: float  # seconds, request sent → whole answer (JSON body, or the `end` frame)
    ttft: float | None = None  # seconds, request sent → first `token` frame (streaming)
    error: str = ""


@dataclass
class LoadResult:
    """Samples of one run and the wall time from the first request to the last answer."""

    samples: list[Sample]
    wall: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    def error_summary(self) -> list[str]:
        """Return the most frequent error messages with their counts."""
        counts = Counter(s.error for s in self.samples if not s.ok)
        return [f"{n} x {msg}" for msg, n in counts.most_common(ERROR_SAMPLES)]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Return the nearest-rank percentile `p` (0-100) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[rank]


def new_clients(concurrency: int) -> list[aiohttp.ClientSession]:
    """Return `concurrency` HTTP/1.1 clients of one keep-alive connection each.

    aiohttp, not httpx: the load generator shares the machine's two cores with the processes it
    measures, and httpx spent 1.4 ms of CPU per non-streaming prediction (2.1 ms streamed) at
    C=50, aiohttp about a third of that (bench/README.md, item 56). One client per concurrent
    caller, each with its own connection, as a browser or SDK per user would have.
    """
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS, connect=30.0)
    return [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=300),
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
        )
        for _ in range(concurrency)
    ]


async def close_clients(clients: Sequence[aiohttp.ClientSession]) -> None:
    """Close every client."""
    await asyncio.gather(*(client.close() for client in clients))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _body(question: str, chat_id: str, streaming: bool = False) -> bytes:
    body: dict[str, object] = {"question": question, "chatId": chat_id}
    if streaming:
        body["streaming"] = True
    return json.dumps(body).encode()


_JSON = {"Content-Type": "application/json"}
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


async def predict_json(
    client: aiohttp.ClientSession, url: str, question: str, expected: str
) -> Sample:
    """Run one non-streaming prediction and validate its answer."""
    chat_id = str(uuid.uuid4())
    started = time.perf_counter()
    try:
        async with client.post(url, data=_body(question, chat_id), headers=_JSON) as response:
            status = response.status
            content = await response.read()
    except TRANSPORT_ERRORS as exc:
        return Sample(False, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    if status != 200:
        return Sample(
            False, latency, error=f"HTTP {status}: {_short(content.decode(errors='replace'))}"
        )
    try:
        data = json.loads(content)
    except ValueError:
        text = content.decode(errors="replace")
        return Sample(False, latency, error=f"body is not JSON: {_short(text)}")
    if not isinstance(data, dict) or data.get("text") != expected:
        text = data.get("text") if isinstance(data, dict) else data
        return Sample(False, latency, error=f"wrong text: {_short(repr(text))}")
    if data.get("chatId") != chat_id:
        return Sample(False, latency, error=f"wrong chatId: {data.get('chatId')!r}")
    return Sample(True, latency)


def _frames(buffer: bytearray) -> list[dict]:
    """Remove the complete SSE frames from `buffer`; return their decoded `data:` payloads."""
    payloads = []
    while (end := buffer.find(b"\n\n")) >= 0:
        frame = bytes(buffer[:end])
        del buffer[: end + 2]
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(json.loads(line[5:]))
    return payloads


async def predict_stream(
    client: aiohttp.ClientSession, url: str, question: str, expected: str
) -> Sample:
    """Run one streaming prediction, timing the first token and the `end` frame; validate it."""
    chat_id = str(uuid.uuid4())
    body = _body(question, chat_id, streaming=True)
    started = time.perf_counter()
    ttft: float | None = None
    ended: float | None = None
    names: list[str] = []
    tokens: list[str] = []
    problem = ""
    try:
        async with client.post(url, data=body, headers=_JSON) as response:
            if response.status != 200:
                text = (await response.read()).decode(errors="replace")
                return Sample(
                    False,
                    time.perf_counter() - started,
                    error=f"HTTP {response.status}: {_short(text)}",
                )
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                text = (await response.read()).decode(errors="replace")
                return Sample(
                    False,
                    time.perf_counter() - started,
                    error=f"not SSE ({content_type}): {_short(text)}",
                )
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                for payload in _frames(buffer):
                    name = payload.get("event")
                    names.append(name)
                    if name == "token":
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        tokens.append(payload.get("data", ""))
                    elif name == "error" and not problem:
                        problem = f"error event: {_short(str(payload.get('data')))}"
                    elif name == "end":
                        ended = time.perf_counter()
    except (*TRANSPORT_ERRORS, ValueError) as exc:
        return Sample(False, time.perf_counter() - started, ttft, f"{type(exc).__name__}: {exc}")
    latency = (ended or time.perf_counter()) - started
    if not problem:
        if not names or names[0] != "start":
            problem = f"first event is {names[0] if names else 'missing'}, not start"
        elif names[-1] != "end":
            problem = f"stream ended after {names[-1]!r} without end"
        elif "metadata" not in names:
            problem = "no metadata event"
        elif "".join(tokens) != expected:
            problem = f"tokens joined differ: {_short(repr(''.join(tokens)))}"
    return Sample(not problem, latency, ttft, problem)


async def run_load(
    clients: Sequence[aiohttp.ClientSession],
    url: str,
    *,
    requests: int,
    streaming: bool,
    expected: str,
) -> LoadResult:
    """Run `requests` predictions, one at a time per client: len(clients) in flight at once."""
    indices = iter(range(requests))
    samples: list[Sample] = []
    predict = predict_stream if streaming else predict_json

    async def worker(client: aiohttp.ClientSession) -> None:
        for index in indices:
            samples.append(await predict(client, url, f"benchmark question {index}", expected))

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients[:requests]))
    return LoadResult(samples, time.perf_counter() - started)
