"""Job functions the worker tests enqueue; importable by worker subprocesses as well."""

from __future__ import annotations

import asyncio
import contextlib
import time

from rq import get_current_job


async def sleep_job(seconds: float) -> float:
    """Sleep on the loop and return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


async def noop_job() -> None:
    """Do nothing (throughput measurements)."""


async def current_job_ids_job(pause: float) -> list[str]:
    """Return the id rq's get_current_job() gives, read three times across awaits."""
    seen = []
    for _ in range(3):
        await asyncio.sleep(pause)
        job = get_current_job()
        seen.append(job.id if job else "")
    return seen


async def track_concurrency_job(key: str, seconds: float) -> int:
    """Count running copies in Redis, keep the maximum in `<key>:max`, and return the count seen."""
    job = get_current_job()
    assert job is not None
    connection = job.connection
    running = int(connection.incr(f"{key}:running"))
    connection.zadd(f"{key}:max", {"max": running}, gt=True)
    try:
        await asyncio.sleep(seconds)
    finally:
        connection.decr(f"{key}:running")
    return running


async def fail_job(message: str) -> None:
    """Raise ValueError(message) after one loop turn."""
    await asyncio.sleep(0)
    raise ValueError(message)


def sync_job(a: int, b: int) -> list[object]:
    """A blocking job function: sleep in its thread, return the sum and its current job's id."""
    time.sleep(0.1)
    job = get_current_job()
    return [a + b, job.id if job else None]


async def ignore_cancel_job(seconds: float) -> str:
    """Misbehave: swallow every cancellation until `seconds` have passed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
    return "done"


ABANDONED: list[list[str]] = []


def remember_abandoned(job_ids: list[str]) -> None:
    """A WORKER_ABANDONED_JOBS_HANDLER for the tests: remember what it was given."""
    ABANDONED.append(job_ids)


async def cancel_aware_job(seconds: float) -> None:
    """Sleep; when cancelled, keep the CancelledError's message in job.meta and re-raise."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError as exc:
        job = get_current_job()
        assert job is not None
        job.meta["cancelled"] = exc.args[0] if exc.args else None
        job.save_meta()
        raise


def record_success(job, connection, result) -> None:
    """An rq success callback: keep the result in `<job id>:callback`."""
    connection.set(f"{job.id}:callback", repr(result))


async def retry_once_job() -> object:
    """Return rq's Retry on the first run (rq re-enqueues it) and "second" on the next."""
    from rq import Retry

    job = get_current_job()
    assert job is not None
    if job.meta.get("ran"):
        return "second"
    job.meta["ran"] = True
    job.save_meta()
    return Retry(max=1)
