"""predictions.dbthreads on the real database: calls side by side, connections handed back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from django.db import connection, connections

from predictions import dbthreads
from predictions.management.commands.rqworker import database_threads

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three_threads() -> Iterator[None]:
    dbthreads.start(3)
    yield
    dbthreads.stop()


def _backend_pid(all_in: threading.Barrier) -> tuple[int, object]:
    all_in.wait()  # three calls at once, or this times out
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return pid, connections["default"]


async def test_calls_run_side_by_side_each_thread_with_its_connection(three_threads):
    all_in = threading.Barrier(3, timeout=10)
    call = dbthreads.database_call(_backend_pid)

    answers = await asyncio.gather(*(call(all_in) for _ in range(3)))

    assert len({pid for pid, _ in answers}) == 3
    wrappers = [wrapper for _, wrapper in answers]
    assert all(wrapper.connection is not None for wrapper in wrappers)  # kept between calls

    dbthreads.stop()

    assert all(wrapper.connection is None for wrapper in wrappers)  # back to the pool
    assert dbthreads.size() == 0


async def test_without_threads_calls_go_where_asgiref_sends_them():
    dbthreads.stop()

    on = await dbthreads.database_call(threading.get_ident)()

    assert on != threading.get_ident()


def test_the_worker_leaves_two_pooled_connections_for_the_rest(settings):
    pool = settings.DATABASES["default"]["OPTIONS"]["pool"]
    settings.WORKER_DATABASE_THREADS = 8
    settings.DATABASES["default"]["OPTIONS"]["pool"] = {**pool, "max_size": 5}
    try:
        assert database_threads() == 3
        settings.DATABASES["default"]["OPTIONS"]["pool"] = {**pool, "max_size": 40}
        assert database_threads() == 8
    finally:
        settings.DATABASES["default"]["OPTIONS"]["pool"] = pool
