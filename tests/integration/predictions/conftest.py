"""Queue-mode fixtures: the app's queue, and our worker running in a thread on it."""

from __future__ import annotations

from collections.abc import Iterator

import django_rq
import pytest

from predictions.worker import ConcurrentWorker
from tests.integration.worker.helpers import running


@pytest.fixture
def rq_queue(queue_mode, settings):
    from predictions import clients

    return django_rq.get_queue(settings.QUEUE_NAME, connection=clients.get_sync_redis())


@pytest.fixture
def worker(rq_queue) -> Iterator[ConcurrentWorker]:
    """Our worker class on the app's queue, running in a thread for the test."""
    w = ConcurrentWorker(
        [rq_queue],
        connection=rq_queue.connection,
        concurrency=20,
        heartbeat_interval=1,
        shutdown_timeout=2,
        health_port=0,
    )
    with running(w) as runner:
        yield w
        w.request_shutdown(force=True)
        runner.join(20)
