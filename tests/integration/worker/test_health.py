"""The worker's /healthz and /readyz, served on its own event loop."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from predictions.worker import ConcurrentWorker
from tests.integration.worker import jobs
from tests.integration.worker.helpers import free_port, http_get, running, wait_until

pytestmark = pytest.mark.integration

MakeWorker = Callable[..., ConcurrentWorker]


def wait_listening(worker: ConcurrentWorker) -> int:
    return wait_until(
        lambda: worker.health_server is not None and worker.health_server.bound_port,
        10,
        "health server",
    )


# `db`: pytest-django's test database, which the probe's thread may open too.
@pytest.mark.usefixtures("db")
def test_health_endpoints_report_ok_and_ready(make_worker: MakeWorker) -> None:
    worker = make_worker(concurrency=7, health_port=free_port(), health_host="127.0.0.1")

    with running(worker) as runner:
        port = wait_listening(worker)
        assert http_get(port, "/healthz") == (200, {"status": "ok", "worker": worker.name})
        status, body = http_get(port, "/readyz")
        assert status == 200, body.get("reasons")
        assert body["status"] == "ready"
        assert body["in_flight"] == 0
        assert body["concurrency"] == 7
        assert body["database_checked"] is True
        assert http_get(port, "/nope")[0] == 404
        worker.request_shutdown()
        runner.join(15)


def test_readyz_is_503_when_redis_is_unreachable(make_worker: MakeWorker) -> None:
    unreachable = Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    worker = make_worker(
        health_port=free_port(),
        health_host="127.0.0.1",
        health_redis=unreachable,
        check_database=False,
    )

    with running(worker) as runner:
        port = wait_listening(worker)
        status, body = http_get(port, "/readyz")
        assert status == 503
        assert body["status"] == "not_ready"
        assert any(reason.startswith("redis unreachable") for reason in body["reasons"])
        assert http_get(port, "/healthz")[0] == 200
        worker.request_shutdown()
        runner.join(15)


def test_worker_runs_without_health_server_when_port_is_taken(
    queue: Queue, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sleep_job, 0.1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = make_worker(health_port=taken.getsockname()[1], health_host="127.0.0.1")

        assert worker.work(burst=True) is True

    assert worker.health_server is not None
    assert worker.health_server.bound_port is None
    assert job.get_status() == JobStatus.FINISHED
