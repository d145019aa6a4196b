"""Per-chatflow rate limits (Flowise's apiConfig.rateLimit), counted per client IP.

A fixed window, as Flowise's express-rate-limit: the first request of a client creates its
counter with the window's lifetime. Queue mode keeps the counters in Redis, so every web process
shares them (one MULTI round trip: SET NX EX, INCR, PTTL); main mode keeps them in the process.
Counters are keyed by chatflow id, a hash of the limit and the client IP, and the limit is read
from the chatflow row of each request: a changed or removed limit applies on every process at
once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from predictions import clients
from predictions.exceptions import BadRequest, PredictionError

logger = logging.getLogger(__name__)

KEY_PREFIX = "flowsite:ratelimit:"
DEFAULT_MESSAGE = "Too many requests, please try again later."
MAX_DURATION = 31 * 86400
MAX_LIMIT = 10**9
# Sweep expired in-process counters after this many checks.
_SWEEP_EVERY = 1000


@dataclass(frozen=True)
class RateLimit:
    limit_max: int
    duration: int
    message: str

    @property
    def fingerprint(self) -> str:
        """Return a short hash of the numbers: counters of a changed limit start afresh."""
        return hashlib.sha256(f"{self.limit_max}:{self.duration}".encode()).hexdigest()[:12]


def _number(value: Any) -> int | None:
    """Return a positive whole number from an int or a numeric string (Flowise stores both)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _disabled(config: dict[str, Any]) -> bool:
    status = config.get("status", True)
    return status is False or (isinstance(status, str) and status.strip().lower() == "false")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse(api_config: Any) -> RateLimit | None:
    """Return the chatflow's rate limit, or None when it has none (or it is off or unusable)."""
    config = api_config.get("rateLimit") if isinstance(api_config, dict) else None
    if not isinstance(config, dict) or _disabled(config):
        return None
    limit_max = _number(config.get("limitMax"))
    duration = _number(config.get("limitDuration"))
    if not limit_max or not duration or limit_max > MAX_LIMIT or duration > MAX_DURATION:
        return None
    message = config.get("limitMsg")
    if not isinstance(message, str) or not message.strip():
        message = DEFAULT_MESSAGE
    return RateLimit(limit_max=limit_max, duration=duration, message=message[:1000])


def check_config(api_config: Any) -> None:
    """Raise BadRequest when apiConfig.rateLimit is switched on but its numbers are unusable."""
    config = api_config.get("rateLimit") if isinstance(api_config, dict) else None
    if config is None:
        return
    if not isinstance(config, dict):
        raise BadRequest("apiConfig.rateLimit must be an object", code="invalid_api_config")
    if _disabled(config):
        return
    limit_max, duration = config.get("limitMax"), config.get("limitDuration")
    if _blank(limit_max) and _blank(duration):
        return
    for name, value, top in (
        ("limitMax", limit_max, MAX_LIMIT),
        ("limitDuration", duration, MAX_DURATION),
    ):
        number = _number(value)
        if number is None or not 1 <= number <= top:
            raise BadRequest(
                f"apiConfig.rateLimit.{name} must be a whole number from 1 to {top} "
                f'(e.g. {{"limitMax": 10, "limitDuration": 60}}), got {value!r}',
                code="invalid_api_config",
            )
    message = config.get("limitMsg")
    if message is not None and not isinstance(message, str):
        raise BadRequest("apiConfig.rateLimit.limitMsg must be a string", code="invalid_api_config")


# --- the client ------------------------------------------------------------------------------


def client_ip(remote_addr: str | None, forwarded_for: str | None) -> str:
    """Return the client's address: the peer, or with TRUST_PROXY the X-Forwarded-For entry
    NUMBER_OF_PROXIES hops from the right (what the outermost trusted proxy saw)."""
    if settings.TRUST_PROXY and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if hops:
            n = settings.NUMBER_OF_PROXIES
            return (hops[-n] if len(hops) >= n else hops[0])[:100]
    return (remote_addr or "unknown")[:100]


def request_ip(request: Any) -> str:
    """Return the client address of a Django request."""
    return client_ip(request.META.get("REMOTE_ADDR"), request.headers.get("X-Forwarded-For"))


def scope_ip(scope: dict[str, Any]) -> str:
    """Return the client address of an ASGI scope (for the WebSocket consumer)."""
    client = scope.get("client") or (None, None)
    forwarded = None
    for name, value in scope.get("headers") or []:
        if name.lower() == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
    return client_ip(client[0] if client else None, forwarded)


# --- counting ----------------------------------------------------------------------------------


class _LocalCounters:
    """Fixed-window counters of one process (main mode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[int, float]] = {}
        self._checks = 0

    def hit(self, key: str, duration: int) -> tuple[int, float]:
        """Count one request; return (count in this window, seconds until the window ends)."""
        now = time.monotonic()
        with self._lock:
            self._checks += 1
            if self._checks % _SWEEP_EVERY == 0:
                self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
            count, ends = self._counters.get(key, (0, 0.0))
            if ends <= now:
                count, ends = 0, now + duration
            count += 1
            self._counters[key] = (count, ends)
            return count, ends - now

    def clear(self) -> None:
        with self._lock:
            self._counters.clear()


local_counters = _LocalCounters()


async def _redis_hit(key: str, duration: int) -> tuple[int, float]:
    async with clients.get_async_redis().pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=duration, nx=True)
        pipe.incr(key)
        pipe.pttl(key)
        _, count, pttl = await pipe.execute()
    return int(count), max(int(pttl), 0) / 1000


def counter_key(chatflow_id: object, limit: RateLimit, ip: str) -> str:
    return f"{KEY_PREFIX}{chatflow_id}:{limit.fingerprint}:{ip}"


async def acheck(chatflow: Any, ip: str) -> None:
    """Count a request of `ip` to `chatflow`; raise 429 rate_limited past its limit.

    A Redis failure lets the request through (logged): the prediction itself reports whether
    the queue is reachable.
    """
    limit = parse(chatflow.api_config)
    if limit is None:
        return
    key = counter_key(chatflow.id, limit, ip)
    if settings.MODE == "queue":
        try:
            count, remaining = await _redis_hit(key, limit.duration)
        except (RedisError, OSError) as exc:
            logger.warning("chatflow %s: rate limit not checked (Redis: %s)", chatflow.id, exc)
            return
    else:
        count, remaining = local_counters.hit(key, limit.duration)
    if count > limit.limit_max:
        raise PredictionError(
            limit.message,
            code="rate_limited",
            status=429,
            headers={"Retry-After": str(max(1, math.ceil(remaining)))},
        )
