"""Serve the worker's /healthz and /readyz over a tiny HTTP server on the worker's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import redis
import redis.exceptions
from rq.connections import parse_connection

if TYPE_CHECKING:
    from redis import Redis

logger = logging.getLogger(__name__)

MAX_LOOP_LAG_SECONDS = 1.0
CHECK_TIMEOUT_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 5.0
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HealthSource(Protocol):
    """What the health server needs to know about its worker."""

    name: str

    @property
    def in_flight_count(self) -> int: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def loop_lag(self) -> float: ...

    @property
    def is_shutting_down(self) -> bool: ...


def readiness_client(connection: Redis, timeout: float = CHECK_TIMEOUT_SECONDS) -> Redis:
    """Return a client like `connection` with short timeouts, for PING probes only."""
    client_class, connection_class, kwargs = parse_connection(connection)
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    pool = redis.ConnectionPool(connection_class=connection_class, max_connections=4, **kwargs)
    return client_class(connection_pool=pool)


def check_django_database() -> None:
    """Open the default database connection, run SELECT 1, and close it (blocking)."""
    from django.db import connection

    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


class HealthServer:
    """Answer GET /healthz (the loop runs) and GET /readyz (Redis, database and loop are fine)."""

    def __init__(
        self,
        source: HealthSource,
        *,
        host: str,
        port: int,
        redis_client: Redis,
        database_check: Callable[[], None] | None,
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.redis_client = redis_client
        self.database_check = database_check
        self._server: asyncio.Server | None = None
        # Probes get their own threads so they never queue behind job bookkeeping.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rq-health")

    @property
    def bound_port(self) -> int | None:
        """The port actually listened on (useful with port 0), or None when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; a port already taken is logged and the worker goes on without the server."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            logger.warning(
                "worker %s: health server not started on %s:%s (%s); continuing without it",
                self.source.name,
                self.host,
                self.port,
                exc,
            )
            return
        logger.info(
            "worker %s: health server on http://%s:%s/healthz and /readyz",
            self.source.name,
            self.host,
            self.bound_port,
        )

    async def stop(self) -> None:
        """Stop listening and release the probe threads and Redis client."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()
            self._server = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.redis_client.connection_pool.disconnect()

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """Return (HTTP status, body) of the readiness probe."""
        checks = await asyncio.gather(self._check_redis(), self._check_database())
        reasons = [reason for reason in checks if reason]
        lag = self.source.loop_lag
        if lag > MAX_LOOP_LAG_SECONDS:
            reasons.append(f"event loop lag {lag:.2f} s > {MAX_LOOP_LAG_SECONDS:.0f} s")
        if self.source.is_shutting_down:
            reasons.append("shutting down")
        body: dict[str, Any] = {
            "status": "not_ready" if reasons else "ready",
            "worker": self.source.name,
            "in_flight": self.source.in_flight_count,
            "concurrency": self.source.concurrency,
            "loop_lag_ms": round(lag * 1000, 1),
            "database_checked": self.database_check is not None,
        }
        if reasons:
            body["reasons"] = reasons
            return 503, body
        return 200, body

    async def _run_check(self, check: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await loop.run_in_executor(self._executor, check)

    async def _check_redis(self) -> str | None:
        try:
            await self._run_check(self.redis_client.ping)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            return f"redis unreachable ({type(exc).__name__})"
        return None

    async def _check_database(self) -> str | None:
        if self.database_check is None:
            return None
        from django.core.exceptions import ImproperlyConfigured
        from django.db import Error as DatabaseError

        try:
            await self._run_check(self.database_check)
        # RuntimeError: pytest-django's blocker and Django's async-unsafe guard raise it.
        except (DatabaseError, ImproperlyConfigured, RuntimeError, OSError, TimeoutError) as exc:
            return f"database unreachable ({type(exc).__name__})"
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                request_line = await reader.readline()
                headers = []
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    headers.append(line)
                parts = request_line.decode("latin-1").split()
                if len(parts) < 2:
                    return
                method, path = parts[0], parts[1].split("?", 1)[0]
                if method not in ("GET", "HEAD"):
                    status, body = 405, {"status": "method_not_allowed"}
                elif path == "/healthz":
                    status, body = 200, {"status": "ok", "worker": self.source.name}
                elif path == "/readyz":
                    status, body = await self.readiness()
                elif path == "/metrics":  # Prometheus text (METRICS_ENABLED), queueadmin's issue
                    from predictions.metrics import worker_metrics

                    status, body = worker_metrics(self.source, headers)
                else:
                    status, body = 404, {"status": "not_found"}
                text = isinstance(body, bytes)
                payload = body if text else json.dumps(body).encode()
                head = (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    f"Content-Type: {_METRICS_TYPE if text else 'application/json'}\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    "Cache-Control: no-store\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                writer.write(head if method == "HEAD" else head + payload)
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            # A slow, broken or oversized probe request: nothing useful to answer.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
