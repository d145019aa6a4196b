"""Prometheus metrics of the prediction path, and fleet-wide counters kept in Redis.

The process that runs a prediction (a worker in queue mode, the web process in main mode)
counts it: started / succeeded / failed / cancelled / timed out by chatflow, wait and run
durations, time to first token, tokens. Cancel steps, timeouts and lost jobs are also counted
with INCR in Redis (`flowsite:metrics:<name>`), so the monitor API on any web process sees the
whole fleet. With PROMETHEUS_MULTIPROC_DIR set, prometheus-client keeps values in files there
and `render()` sums the processes of the host. Recording never raises into the prediction path.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "flowsite:metrics:"
CANCEL_PUBLISHED = "cancel_published"
CANCEL_MARKER_HITS = "cancel_marker_hits"
CANCEL_DISPATCHED = "cancel_dispatched"
TIMEOUTS = "timeouts"
LOST_JOBS = "lost_jobs"
FLEET_COUNTERS = (CANCEL_PUBLISHED, CANCEL_MARKER_HITS, CANCEL_DISPATCHED, TIMEOUTS, LOST_JOBS)
UNKNOWN = "unknown"
# The classic text format (what generate_latest writes); every Prometheus version reads it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)

STARTED = Counter("flowsite_predictions_started", "Predictions that started running", ["chatflow"])
SUCCEEDED = Counter(
    "flowsite_predictions_finished", "Predictions that finished successfully", ["chatflow"]
)
FAILED = Counter(
    "flowsite_predictions_failed", "Predictions that failed, by error code", ["chatflow", "code"]
)
CANCELLED = Counter(
    "flowsite_predictions_cancelled", "Predictions stopped by request", ["chatflow"]
)
TIMED_OUT = Counter(
    "flowsite_predictions_timed_out", "Predictions over PREDICTION_TIMEOUT", ["chatflow"]
)
DURATION = Histogram(
    "flowsite_prediction_duration_seconds",
    "Run time from start to outcome",
    ["chatflow", "outcome"],
    buckets=_DURATION_BUCKETS,
)
WAIT = Histogram(
    "flowsite_prediction_wait_seconds",
    "Time from enqueue to start",
    ["chatflow"],
    buckets=_WAIT_BUCKETS,
)
FIRST_TOKEN = Histogram(
    "flowsite_prediction_time_to_first_token_seconds",
    "Time from start to the first token",
    ["chatflow"],
    buckets=_TTFT_BUCKETS,
)
TOKENS = Counter("flowsite_prediction_tokens", "Tokens streamed by the engine", ["chatflow"])
IN_FLIGHT = Gauge(
    "flowsite_worker_in_flight",
    "Predictions running in this process now",
    ["worker"],
    multiprocess_mode="livesum",
)
CONCURRENCY = Gauge(
    "flowsite_worker_concurrency",
    "Predictions this process may run at once (WORKER_CONCURRENCY)",
    ["worker"],
    multiprocess_mode="livemax",
)


@dataclass
class _Run:
    chatflow: str
    started: float
    first_token: bool = False
    tokens: Any = None  # TOKENS of its chatflow, looked up once rather than per token


# Runs of this process by prediction id; entries older than a day are dropped as leftovers.
_runs: dict[str, _Run] = {}
_RUN_MAX_AGE = 86400.0
_local_counts: dict[str, int] = {}
_lock = threading.Lock()


def _chatflow_of(prediction_id: str, chatflow_id: Any = None) -> str:
    if chatflow_id:
        return str(chatflow_id)
    run = _runs.get(prediction_id)
    return run.chatflow if run else UNKNOWN


def _end(prediction_id: str, outcome: str, chatflow: str) -> None:
    run = _runs.pop(prediction_id, None)
    if run is not None:
        DURATION.labels(chatflow, outcome).observe(time.monotonic() - run.started)


def prediction_started(prediction: Any) -> None:
    """Count a prediction that starts running here; observe how long it waited."""
    try:
        chatflow = str(prediction.chatflow_id)
        STARTED.labels(chatflow).inc()
        if prediction.started_at and prediction.enqueued_at:
            waited = (prediction.started_at - prediction.enqueued_at).total_seconds()
            WAIT.labels(chatflow).observe(max(0.0, waited))
        now = time.monotonic()
        if len(_runs) > 10_000:
            for pid, run in list(_runs.items()):
                if now - run.started > _RUN_MAX_AGE:
                    _runs.pop(pid, None)
        _runs[str(prediction.id)] = _Run(
            chatflow=chatflow, started=now, tokens=TOKENS.labels(chatflow)
        )
    except Exception:  # metrics must never break a prediction
        logger.exception("metrics: prediction_started failed")


def prediction_event(prediction_id: str, name: str) -> None:
    """Count a token the engine emitted; the first one gives the time to first token."""
    if name != "token":
        return
    run = _runs.get(prediction_id)
    if run is None:
        TOKENS.labels(UNKNOWN).inc()
        return
    run.tokens.inc()
    if not run.first_token:
        run.first_token = True
        FIRST_TOKEN.labels(run.chatflow).observe(time.monotonic() - run.started)


def prediction_succeeded(prediction_id: str) -> None:
    chatflow = _chatflow_of(prediction_id)
    SUCCEEDED.labels(chatflow).inc()
    _end(prediction_id, "succeeded", chatflow)


async def aprediction_failed(prediction_id: str, code: str) -> None:
    """Count a failure; timeouts and lost jobs also go to the fleet counters in Redis."""
    chatflow = _chatflow_of(prediction_id)
    FAILED.labels(chatflow, code).inc()
    if code == "prediction_timeout":
        TIMED_OUT.labels(chatflow).inc()
        await acount(TIMEOUTS)
    elif code == "worker_lost":
        await acount(LOST_JOBS)
    _end(prediction_id, "failed", chatflow)


async def aprediction_cancelled(prediction_id: str, chatflow_id: Any = None) -> None:
    chatflow = _chatflow_of(prediction_id, chatflow_id)
    CANCELLED.labels(chatflow).inc()
    _end(prediction_id, "cancelled", chatflow)


# --- fleet counters ----------------------------------------------------------------------------


def _queue_mode() -> bool:
    from django.conf import settings

    return settings.MODE == "queue"


def _count_locally(name: str) -> None:
    with _lock:
        _local_counts[name] = _local_counts.get(name, 0) + 1


async def acount(name: str) -> None:
    """INCR a fleet counter in Redis (queue mode) or in this process (main mode)."""
    if not _queue_mode():
        _count_locally(name)
        return
    from predictions import clients

    try:
        await clients.get_async_redis().incr(REDIS_KEY_PREFIX + name)
    except (RedisError, OSError) as exc:
        logger.warning("metrics: could not count %s: %s", name, exc)


def count(name: str) -> None:
    """Like `acount`, for sync code."""
    if not _queue_mode():
        _count_locally(name)
        return
    from predictions import clients

    try:
        clients.get_sync_redis().incr(REDIS_KEY_PREFIX + name)
    except (RedisError, OSError) as exc:
        logger.warning("metrics: could not count %s: %s", name, exc)


def local_counters() -> dict[str, int]:
    """The fleet counters of this process (main mode keeps them in memory)."""
    with _lock:
        return {name: _local_counts.get(name, 0) for name in FLEET_COUNTERS}


# --- exposition --------------------------------------------------------------------------------


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def render() -> bytes:
    """Return this process's metrics (every process of the host in multiprocess mode)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def token_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (always true without a token)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def worker_metrics(source: Any, header_lines: list[bytes]) -> tuple[int, Any]:
    """Answer a worker's GET /metrics: (status, bytes body) or (status, JSON-able error body)."""
    from django.conf import settings

    if not getattr(settings, "METRICS_ENABLED", False):
        return 404, {"status": "not_found"}
    authorization = None
    for line in header_lines:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "authorization":
            authorization = value.strip()
    if not token_ok(authorization, getattr(settings, "METRICS_TOKEN", "")):
        return 401, {"status": "unauthorized"}
    IN_FLIGHT.labels(source.name).set(source.in_flight_count)
    CONCURRENCY.labels(source.name).set(source.concurrency)
    return 200, render()
