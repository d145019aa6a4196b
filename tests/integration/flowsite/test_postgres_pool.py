"""flowsite.postgresql's pool against a real PostgreSQL: fail fast while away, recover at once."""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout

from flowsite.postgresql import base
from flowsite.postgresql.base import FailFastPool
from tests.integration.worker.helpers import free_port

pytestmark = pytest.mark.integration

# The pool's own timeout: a caller that waited it out would take this long.
POOL_TIMEOUT = 30.0


def _conninfo(port: int | None = None) -> str:
    url = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    return (
        f"host={url.hostname or '127.0.0.1'} port={port or url.port or 5432} "
        f"user={url.username or 'postgres'} dbname=postgres connect_timeout=5"
    )


def _pool(conninfo: str | None = None, **options) -> FailFastPool:
    """A pool not opened yet, with psycopg_pool's round-trip check unless told otherwise."""
    options.setdefault("check", FailFastPool.check_connection)
    return FailFastPool(conninfo or _conninfo(), timeout=POOL_TIMEOUT, open=False, **options)


def test_pool_refuses_at_once_while_the_database_is_unreachable() -> None:
    pool = _pool(_conninfo(free_port()), min_size=1)
    pool.open()
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                pool.getconn()
            # Far below the pool's timeout: nobody waits it out for an absent server.
            assert time.monotonic() - started < POOL_TIMEOUT / 3
    finally:
        pool.close()


def test_pool_replaces_connections_a_restart_broke_without_waiting() -> None:
    pool = _pool(min_size=3, max_size=3)
    pool.open(wait=True)
    try:
        # What a restart does to every pooled connection: the server side is gone.
        with psycopg.connect(_conninfo(), autocommit=True) as admin:
            pids = [pool.getconn() for _ in range(3)]
            backend_pids = [conn.info.backend_pid for conn in pids]
            for conn in pids:
                pool.putconn(conn)
            for pid in backend_pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        started = time.monotonic()
        conn = pool.getconn()
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid not in backend_pids
        finally:
            pool.putconn(conn)
        # psycopg_pool alone sleeps 1 s, then 2 s… between broken connections.
        assert time.monotonic() - started < 1.0
    finally:
        pool.close()


@pytest.fixture
def checks(monkeypatch) -> list[object]:
    """The connections psycopg_pool's round-trip check was run on."""
    checked: list[object] = []
    check = ConnectionPool.check_connection

    def counting(conn) -> None:
        checked.append(conn)
        check(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counting))
    return checked


def _pool_of_one() -> FailFastPool:
    pool = _pool(
        kwargs={"autocommit": True},
        min_size=1,
        max_size=1,
        check=FailFastPool.check_connection_in_doubt,
    )
    pool.open(wait=True)
    return pool


def test_a_connection_given_back_moments_ago_is_taken_without_a_round_trip(
    checks, monkeypatch
) -> None:
    pool = _pool_of_one()
    try:
        first = pool.getconn()  # new: never given back, so checked
        assert checks == [first]
        pool.putconn(first)

        again = pool.getconn()
        assert again is first
        assert checks == [first]  # given back just now, nothing to read: trusted
        assert again.execute("SELECT 1").fetchone() == (1,)
        pool.putconn(again)

        monkeypatch.setattr(base, "TRUSTED_IDLE_SECONDS", 0.0)  # as if idle for long
        pool.putconn(pool.getconn())
        assert checks == [first, first]
    finally:
        pool.close()


def test_a_connection_the_server_closed_since_it_was_given_back_is_replaced(checks) -> None:
    pool = _pool_of_one()
    try:
        conn = pool.getconn()
        backend_pid = conn.info.backend_pid
        pool.putconn(conn)
        with psycopg.connect(_conninfo(), autocommit=True) as admin:
            # Returns once the backend is gone: it said why and closed the connection.
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend_pid,))

        started = time.monotonic()
        replaced = pool.getconn()
        try:
            assert replaced.execute("SELECT 1").fetchone() == (1,)
            assert replaced.info.backend_pid != backend_pid
        finally:
            pool.putconn(replaced)
        assert conn in checks  # readable, so checked: the check found it broken
        assert time.monotonic() - started < 1.0
    finally:
        pool.close()
