"""PostgreSQL backend whose connection pool refuses at once while the database is unreachable.

Django's built-in pool (`OPTIONS["pool"]`, psycopg_pool) lets a request wait its whole timeout
while the pool's background worker retries the server with backoff (1 s, 2 s, 4 s…), and sleeps
with that backoff after a pooled connection fails its check, as every idle connection does after
a database restart. Flowsite promises to fail fast (503 database_unavailable) during an outage
and to recover as soon as the database is back, so the pool here:

- once a connection attempt failed, lets each caller try one connection of its own first
  (refused within milliseconds while the server is away; added to the pool when it is back);
- on a failed check, drops every idle connection (they all predate the restart) and goes on at
  once, without sleeping;
- waits for a busy pool in short slices, so a caller that began waiting before the server went
  away is refused then too;
- checks a connection with a round trip (psycopg_pool's empty query) only when in doubt
  (`check_connection_in_doubt`): not every time a request takes one.

psycopg-pool is pinned: this overrides and calls its private methods
(tests/integration/flowsite/test_postgres_pool.py exercises them).
"""

from __future__ import annotations

import select
import threading
from time import monotonic
from typing import Any

from django.db.backends.postgresql import base
from psycopg import OperationalError
from psycopg_pool import ConnectionPool, PoolTimeout

# How long a caller waits for a pooled connection before it looks at the server's state again.
WAIT_SLICE_SECONDS = 0.25
# A connection given back to the pool this recently is trusted without a round trip, unless
# its socket has something to read (see FailFastPool.check_connection_in_doubt).
TRUSTED_IDLE_SECONDS = 5.0


def _has_input(conn: Any) -> bool:
    """Whether an idle connection's socket is readable (or closed): an idle connection is sent
    nothing, except what a server says as it closes it (an error, then the end of the stream)
    or a setting it reports."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class FailFastPool(ConnectionPool):
    """A psycopg_pool ConnectionPool that never waits out its timeout for an absent database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._unreachable = False
        self._probing = threading.Lock()
        super().__init__(*args, **kwargs)

    @staticmethod
    def check_connection_in_doubt(conn: Any) -> None:
        """psycopg_pool's check (an empty query: a round trip to the server) for a connection
        that may be broken: one that was idle for TRUSTED_IDLE_SECONDS or more, or whose socket
        has something to read. Checking every connection a request takes cost each request
        a round trip (4 % of the web process's CPU). A restarted or terminated server closes
        its connections, which makes them readable; a connection silently dropped on the way
        (a firewall, a NAT) is one that was idle long.
        """
        returned = getattr(conn, "_flowsite_returned_at", None)
        if returned is None or monotonic() - returned >= TRUSTED_IDLE_SECONDS or _has_input(conn):
            ConnectionPool.check_connection(conn)

    def putconn(self, conn: Any) -> None:
        conn._flowsite_returned_at = monotonic()
        super().putconn(conn)

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            conn = super()._connect(timeout)
        except OperationalError:
            self._unreachable = True
            raise
        self._unreachable = False
        return conn

    def _reconnect_now(self) -> None:
        """Connect once, now: refuse the caller if that fails, else pool the new connection."""
        if not self._probing.acquire(blocking=False):
            raise PoolTimeout("the database is unreachable (another request is retrying it)")
        try:
            if not self._unreachable:
                return
            try:
                conn = self._connect()
            except OperationalError as exc:
                raise PoolTimeout(f"the database is unreachable: {exc}") from exc
            self.drain()  # idle connections from before the outage are broken
            with self._lock:
                self._nconns += 1
            self._add_to_pool(conn)
        finally:
            self._probing.release()

    def _getconn_with_check_loop(self, deadline: float) -> Any:
        while True:
            if self._unreachable:
                self._reconnect_now()
            remaining = deadline - monotonic()
            try:
                # Wait in slices, to notice a server that went away meanwhile.
                conn = self._getconn_unchecked(min(remaining, WAIT_SLICE_SECONDS))
            except PoolTimeout:
                if remaining <= WAIT_SLICE_SECONDS:
                    raise
                continue
            try:
                self._check_connection(conn)
            except Exception:
                # The server went away, or restarted: either way no idle connection is good.
                self._putconn(conn, from_getconn=True)
                self.drain()
                self._unreachable = True  # so the next turn connects now, or refuses at once
                continue
            except BaseException:
                self._putconn(conn, from_getconn=True)
                raise
            return conn


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> FailFastPool | None:
        """Django's `pool`, built as a FailFastPool (same options, same sharing per alias)."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == base.NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: it sets its own mode later
            check = (
                FailFastPool.check_connection_in_doubt
                if self.settings_dict["CONN_HEALTH_CHECKS"]
                else None
            )
            pool = FailFastPool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                check=check,
                **({} if pool_options is True else pool_options),
            )
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
