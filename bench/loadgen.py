"""The load generator: N predictions at concurrency C over httpx, each one validated.

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

import httpx

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


def new_clients(concurrency: int) -> list[httpx.AsyncClient]:
    """Return `concurrency` HTTP/1.1 clients of one keep-alive connection each.

    One client per concurrent caller rather than one client with `concurrency` connections:
    httpcore's pool does work proportional to its connections on every request and response, so
    a single shared client spends several ms of CPU per request at C=200 (measured: 5.8 ms at
    C=200 against 1.5 ms like this) and becomes the bottleneck of the benchmark.
    """
    return [
        httpx.AsyncClient(
            http1=True,
            http2=False,
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=300
            ),
            timeout=httpx.Timeout(
                REQUEST_TIMEOUT_SECONDS, connect=30.0, pool=REQUEST_TIMEOUT_SECONDS
            ),
        )
        for _ in range(concurrency)
    ]


async def close_clients(clients: Sequence[httpx.AsyncClient]) -> None:
    """Close every client."""
    await asyncio.gather(*(client.aclose() for client in clients))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


async def predict_json(client: httpx.AsyncClient, url: str, question: str, expected: str) -> Sample:
    """Run one non-streaming prediction and validate its answer."""
    chat_id = str(uuid.uuid4())
    started = time.perf_counter()
    try:
        response = await client.post(url, json={"question": question, "chatId": chat_id})
    except httpx.HTTPError as exc:
        return Sample(False, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return Sample(False, latency, error=f"HTTP {response.status_code}: {_short(response.text)}")
    try:
        data = response.json()
    except ValueError:
        return Sample(False, latency, error=f"body is not JSON: {_short(response.text)}")
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
    client: httpx.AsyncClient, url: str, question: str, expected: str
) -> Sample:
    """Run one streaming prediction, timing the first token and the `end` frame; validate it."""
    chat_id = str(uuid.uuid4())
    body = {"question": question, "chatId": chat_id, "streaming": True}
    started = time.perf_counter()
    ttft: float | None = None
    ended: float | None = None
    names: list[str] = []
    tokens: list[str] = []
    problem = ""
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return Sample(
                    False,
                    time.perf_counter() - started,
                    error=f"HTTP {response.status_code}: {_short(text)}",
                )
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                text = (await response.aread()).decode(errors="replace")
                return Sample(
                    False,
                    time.perf_counter() - started,
                    error=f"not SSE ({content_type}): {_short(text)}",
                )
            buffer = bytearray()
            async for chunk in response.aiter_raw():
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
    except (httpx.HTTPError, ValueError) as exc:
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
    clients: Sequence[httpx.AsyncClient],
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

    async def worker(client: httpx.AsyncClient) -> None:
        for index in indices:
            samples.append(await predict(client, url, f"benchmark question {index}", expected))

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients[:requests]))
    return LoadResult(samples, time.perf_counter() - started)
