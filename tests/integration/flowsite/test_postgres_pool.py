"""flowsite.postgresql's pool against a real PostgreSQL: fail fast while away, recover at once."""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg_pool import PoolTimeout

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


def test_pool_refuses_at_once_while_the_database_is_unreachable() -> None:
    pool = FailFastPool(
        _conninfo(free_port()),
        min_size=1,
        timeout=POOL_TIMEOUT,
        check=FailFastPool.check_connection,
        open=False,
    )
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
    pool = FailFastPool(
        _conninfo(),
        min_size=3,
        max_size=3,
        timeout=POOL_TIMEOUT,
        check=FailFastPool.check_connection,
        open=False,
    )
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
