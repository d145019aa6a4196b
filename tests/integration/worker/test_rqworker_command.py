"""`manage.py rqworker` with the project's settings builds and runs ConcurrentWorker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from tests.integration.worker import jobs
from tests.integration.worker.helpers import PROJECT_ROOT

pytestmark = pytest.mark.integration

COMMAND_QUEUE = "flowsite-worker-test"


def _run_rqworker(redis_url: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """Run the bare `manage.py rqworker --burst` on COMMAND_QUEUE with the project's settings."""
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "flowsite.settings",
        "MODE": "queue",
        "REDIS_URL": redis_url,
        "QUEUE_NAME": COMMAND_QUEUE,
        "WORKER_PORT": "0",
        **env,
    }
    # --skip-checks: this is about the worker wiring, not the URLconf or models' checks.
    completed = subprocess.run(
        [sys.executable, "manage.py", "rqworker", COMMAND_QUEUE, "--burst", "--skip-checks"],
        cwd=PROJECT_ROOT,
        env=environ,
        capture_output=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    return completed


def test_rqworker_command_runs_jobs_concurrently(redis_url: str, redis_conn: Redis) -> None:
    queue = Queue(COMMAND_QUEUE, connection=redis_conn)
    enqueued = [queue.enqueue(jobs.sleep_job, 1) for _ in range(5)]

    _run_rqworker(redis_url)

    for job in enqueued:
        job.refresh()
    assert [job.get_status() for job in enqueued] == [JobStatus.FINISHED] * 5
    # They overlapped, which only the concurrent worker class does.
    assert max(job.started_at for job in enqueued) < min(job.ended_at for job in enqueued)  # type: ignore[type-var]


@pytest.mark.parametrize(("log_level", "logs_jobs"), [("warning", False), ("info", True)])
def test_rqworker_command_logs_jobs_by_log_level(
    redis_url: str, redis_conn: Redis, log_level: str, logs_jobs: bool
) -> None:
    queue = Queue(COMMAND_QUEUE, connection=redis_conn)
    job = queue.enqueue(jobs.sleep_job, 0)

    completed = _run_rqworker(redis_url, LOG_LEVEL=log_level)

    # rq's per-job line ("Successfully completed …") follows LOG_LEVEL, not --verbosity alone.
    assert (job.id in completed.stdout.decode()) is logs_jobs
