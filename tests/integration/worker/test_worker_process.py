"""ConcurrentWorker as a real process: SIGTERM drain, requeue on timeout, second signal, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result

from predictions.worker import ConcurrentWorker
from tests.integration.worker import jobs
from tests.integration.worker.helpers import running, wait_until

pytestmark = pytest.mark.integration

Spawn = Callable[..., subprocess.Popen[bytes]]


def wait_started(queue: Queue, count: int) -> None:
    """Wait until `count` jobs are STARTED: registered, and marked so (rq's second step; a
    worker killed between the two left a job that never ran, which the sweep requeues)."""
    registry = StartedJobRegistry(queue=queue)

    def started() -> bool:
        job_ids = registry.get_job_ids(cleanup=False)
        jobs_now = [queue.fetch_job(job_id) for job_id in job_ids]
        marked = [job for job in jobs_now if job and job.get_status() == JobStatus.STARTED]
        return len(job_ids) == count and len(marked) == count

    wait_until(started, 15, f"{count} started job(s)")


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"worker process still running after {timeout} s") from exc


def assert_requeued(queue: Queue, job: Job) -> None:
    assert job.get_status() == JobStatus.QUEUED
    assert queue.get_job_ids()[0] == job.id
    assert job.id not in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)
    assert job.id not in FailedJobRegistry(queue=queue)
    assert queue.connection.llen(queue.intermediate_queue_key) == 0


def test_sigterm_lets_in_flight_jobs_finish_and_exits_0(queue: Queue, spawn_worker: Spawn) -> None:
    enqueued = [queue.enqueue(jobs.sleep_job, 1.5) for _ in range(3)]
    process = spawn_worker(name="drain", concurrency=5, shutdown_timeout=20)
    wait_started(queue, 3)

    process.send_signal(signal.SIGTERM)

    assert wait_exit(process, 15) == 0
    assert [job.get_status() for job in enqueued] == [JobStatus.FINISHED] * 3


def test_shutdown_timeout_requeues_what_is_left(
    queue: Queue, spawn_worker: Spawn, make_worker: Callable[..., ConcurrentWorker]
) -> None:
    quick = queue.enqueue(jobs.sleep_job, 0.5)
    slow = queue.enqueue(jobs.sleep_job, 3)
    process = spawn_worker(name="short-drain", concurrency=5, shutdown_timeout=1)
    wait_started(queue, 2)

    process.send_signal(signal.SIGTERM)

    assert wait_exit(process, 10) == 0
    assert quick.get_status() == JobStatus.FINISHED
    assert_requeued(queue, slow)
    # Another worker picks it up and completes it.
    make_worker().work(burst=True)
    assert slow.get_status() == JobStatus.FINISHED


def test_second_sigterm_requeues_and_exits_at_once(
    queue: Queue, redis_conn: Redis, spawn_worker: Spawn
) -> None:
    slow = queue.enqueue(jobs.sleep_job, 60)
    process = spawn_worker(name="impatient", shutdown_timeout=60)
    wait_started(queue, 1)

    process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: redis_conn.hexists("rq:worker:impatient", "shutdown_requested_date"),
        10,
        "warm shutdown to begin",
    )
    second = time.monotonic()
    process.send_signal(signal.SIGTERM)

    assert wait_exit(process, 10) == 0
    assert time.monotonic() - second < 5
    assert_requeued(queue, slow)


class RecordingWorker(ConcurrentWorker):
    """Remembers what its sweeps reported through the on_abandoned_jobs hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.abandoned: list[list[str]] = []

    def on_abandoned_jobs(self, job_ids: list[str]) -> None:
        self.abandoned.append(job_ids)


def test_jobs_of_a_killed_worker_fail_within_the_bound(
    queue: Queue, redis_conn: Redis, spawn_worker: Spawn
) -> None:
    job = queue.enqueue(jobs.sleep_job, 60)
    settings: dict[str, Any] = {"heartbeat_interval": 1, "heartbeat_ttl": 2}
    process = spawn_worker(name="doomed", **settings)
    wait_started(queue, 1)

    os.killpg(process.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_exit(process, 5)
    survivor = RecordingWorker([queue], connection=redis_conn, health_port=0, **settings)
    bound = survivor.abandoned_job_bound
    with running(survivor) as runner:
        wait_until(lambda: job.get_status() == JobStatus.FAILED, bound + 5, "abandoned job")
        detected = time.monotonic() - killed
        survivor.request_shutdown()
        runner.join(15)

    # The last heartbeat came at most one interval before the kill, hence the slack.
    assert detected <= bound + 1.5
    assert job.id in FailedJobRegistry(queue=queue)
    result = job.latest_result()
    assert result is not None
    assert result.type == Result.Type.FAILED
    assert "AbandonedJobError" in (result.exc_string or "")
    assert survivor.abandoned == [[job.id]]
