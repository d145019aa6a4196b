"""ConcurrentWorker in-process: concurrency, rq's records, failures, timeouts, stop, heartbeats."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis.exceptions
from redis import Redis
from rq import Callback, Queue, Retry
from rq.command import (
    send_shutdown_command,
    send_stop_execution_command,
    send_stop_job_command,
)
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import as_text, now
from rq.worker import WorkerStatus

from predictions.worker import (
    CANCELLED_TO_REQUEUE,
    CANCELLED_TO_STOP,
    ConcurrentWorker,
    bookkeeping,
)
from tests.integration.worker import jobs
from tests.integration.worker.helpers import running, wait_until

pytestmark = pytest.mark.integration

MakeWorker = Callable[..., ConcurrentWorker]


def worker_field(redis_conn: Redis, worker: ConcurrentWorker, field: str) -> str | None:
    value = redis_conn.hget(worker.key, field)
    return as_text(value) if value is not None else None


def test_worker_runs_jobs_concurrently(queue: Queue, make_worker: MakeWorker) -> None:
    enqueued = [queue.enqueue(jobs.sleep_job, 1) for _ in range(50)]

    started = time.monotonic()
    assert make_worker(concurrency=50).work(burst=True) is True
    elapsed = time.monotonic() - started

    # Serially this is 50 s; concurrently about 1 s. The bound is loose on purpose.
    assert elapsed < 10
    finished = FinishedJobRegistry(queue=queue)
    assert sorted(finished.get_job_ids()) == sorted(job.id for job in enqueued)
    for job in enqueued:
        assert job.get_status() == JobStatus.FINISHED
        result = job.latest_result()
        assert result is not None
        assert result.type == Result.Type.SUCCESSFUL
        assert result.return_value == 1


def test_worker_registries_show_every_in_flight_job(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    enqueued = [queue.enqueue(jobs.sleep_job, 2) for _ in range(20)]
    ids = sorted(job.id for job in enqueued)
    worker = make_worker(concurrency=50)

    with running(worker, burst=True) as runner:
        started = StartedJobRegistry(queue=queue)
        wait_until(lambda: started.get_job_count(cleanup=False) == 20, 10, "20 started jobs")
        assert sorted(started.get_job_ids()) == ids
        assert worker.current_execution_count == 20
        assert worker_field(redis_conn, worker, "state") == "busy"
        assert {job.get_status() for job in enqueued} == {JobStatus.STARTED}
        seen = ConcurrentWorker.find_by_key(worker.key, connection=redis_conn)
        assert seen is not None
        assert sorted(e.job_id for e in seen.get_current_executions()) == ids
        assert runner.join() is True

    assert worker_field(redis_conn, worker, "state") == "idle"
    assert StartedJobRegistry(queue=queue).count == 0
    assert worker.current_execution_count == 0
    assert worker_field(redis_conn, worker, "successful_job_count") == "20"
    assert worker_field(redis_conn, worker, "failed_job_count") is None


def test_worker_respects_concurrency(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    for _ in range(10):
        queue.enqueue(jobs.track_concurrency_job, "concurrency", 0.3)

    make_worker(concurrency=3).work(burst=True)

    assert redis_conn.zscore("concurrency:max", "max") == 3
    assert FinishedJobRegistry(queue=queue).count == 10


def test_worker_gives_each_task_its_own_current_job(queue: Queue, make_worker: MakeWorker) -> None:
    enqueued = [queue.enqueue(jobs.current_job_ids_job, 0.05) for _ in range(20)]

    make_worker(concurrency=20).work(burst=True)

    for job in enqueued:
        assert job.latest_result().return_value == [job.id] * 3  # type: ignore[union-attr]


def test_worker_runs_sync_functions_in_a_thread_with_their_job(
    queue: Queue, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sync_job, 2, 3)

    make_worker().work(burst=True)

    assert job.get_status() == JobStatus.FINISHED
    assert job.latest_result().return_value == [5, job.id]  # type: ignore[union-attr]


def test_worker_records_failure_with_traceback_and_goes_on(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    failing = queue.enqueue(jobs.fail_job, "boom")
    healthy = queue.enqueue(jobs.sleep_job, 0.1)
    worker = make_worker(concurrency=1)

    worker.work(burst=True)

    assert failing.get_status() == JobStatus.FAILED
    assert failing.id in FailedJobRegistry(queue=queue)
    result = failing.latest_result()
    assert result is not None
    assert result.type == Result.Type.FAILED
    # The traceback as rq formats it, down to the job function's frame.
    assert "Traceback (most recent call last)" in (result.exc_string or "")
    assert "in fail_job\n    raise ValueError(message)" in (result.exc_string or "")
    assert (result.exc_string or "").rstrip().endswith("ValueError: boom")
    assert healthy.get_status() == JobStatus.FINISHED
    assert worker_field(redis_conn, worker, "failed_job_count") == "1"
    assert worker_field(redis_conn, worker, "successful_job_count") == "1"


def test_worker_retries_a_failed_job_as_rq_does(queue: Queue, make_worker: MakeWorker) -> None:
    job = queue.enqueue(jobs.fail_job, "again", retry=Retry(max=1))

    make_worker().work(burst=True)

    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 0
    assert job.id in FailedJobRegistry(queue=queue)


def test_dependents_run_once_their_dependency_finished(
    queue: Queue, make_worker: MakeWorker
) -> None:
    first = queue.enqueue(jobs.sleep_job, 0.2)
    second = queue.enqueue(jobs.sleep_job, 0, depends_on=first)
    assert second.get_status() == JobStatus.DEFERRED

    make_worker(concurrency=10).work(burst=True)

    first.refresh()
    second.refresh()
    assert [first.get_status(), second.get_status()] == [JobStatus.FINISHED] * 2
    assert first.ended_at is not None
    assert second.started_at is not None
    assert second.started_at >= first.ended_at


def test_success_callbacks_and_retry_results_take_rqs_own_path(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    called = queue.enqueue(jobs.sleep_job, 0, on_success=Callback(jobs.record_success))
    retried = queue.enqueue(jobs.retry_once_job)

    make_worker().work(burst=True)

    assert redis_conn.get(f"{called.id}:callback") == b"0"
    retried.refresh()
    assert retried.get_status() == JobStatus.FINISHED
    assert retried.return_value() == "second"


def test_a_job_whose_start_fails_is_failed_and_the_worker_goes_on(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = queue.enqueue(jobs.sleep_job, 0)
    fine = queue.enqueue(jobs.sleep_job, 0)
    real_start = bookkeeping.start_transaction

    def start_transaction(worker, job, *args, **kwargs):
        if job.id == broken.id:
            raise ValueError("no start for you")
        return real_start(worker, job, *args, **kwargs)

    monkeypatch.setattr(bookkeeping, "start_transaction", start_transaction)

    make_worker().work(burst=True)

    broken.refresh()
    assert broken.get_status() == JobStatus.FAILED
    result = broken.latest_result()
    assert result is not None
    assert "no start for you" in (result.exc_string or "")
    assert fine.get_status() == JobStatus.FINISHED


def test_a_started_job_has_rqs_records_and_a_finished_one_none_left(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sleep_job, 1)
    worker = make_worker()

    with running(worker, burst=True) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "the job started")
        job.refresh()
        assert job.worker_name == worker.name
        assert job.started_at is not None
        assert job.last_heartbeat is not None
        assert redis_conn.ttl(job.key) == -1  # persisted while it runs
        assert redis_conn.lrange(queue.intermediate_queue_key, 0, -1) == []
        [execution] = job.get_executions()
        assert execution.worker_name == worker.name
        assert StartedJobRegistry(queue=queue).get_job_ids() == [job.id]
        assert worker_field(redis_conn, worker, "state") == "busy"
        assert runner.join() is True

    assert job.get_executions() == []
    assert redis_conn.smembers(execution.worker_executions_key) == set()
    assert float(worker_field(redis_conn, worker, "total_working_time") or 0) >= 1
    assert job.id in FinishedJobRegistry(queue=queue)


def test_worker_fails_a_job_over_its_timeout(queue: Queue, make_worker: MakeWorker) -> None:
    job = queue.enqueue(jobs.sleep_job, 30, job_timeout=1)

    started = time.monotonic()
    make_worker().work(burst=True)

    assert time.monotonic() - started < 5
    assert job.get_status() == JobStatus.FAILED
    exc_string = job.latest_result().exc_string or ""  # type: ignore[union-attr]
    assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in exc_string


def test_stop_command_cancels_exactly_that_job(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    enqueued = [queue.enqueue(jobs.sleep_job, 3) for _ in range(3)]
    worker = make_worker(concurrency=3)

    with running(worker, burst=True) as runner:
        wait_until(
            lambda: all(Job.fetch(j.id, connection=redis_conn).worker_name for j in enqueued),
            10,
            "3 running jobs",
        )
        # rq 3.0.0's own handler only ever matches this one; stop another.
        first = next(iter(worker.executions.values())).job_id
        target = next(job for job in enqueued if job.id != first)
        sent = time.monotonic()
        send_stop_job_command(redis_conn, target.id)
        wait_until(lambda: target.get_status() == JobStatus.STOPPED, 5, "stopped job")
        assert time.monotonic() - sent < 2
        runner.join()

    assert target.id in FailedJobRegistry(queue=queue)
    assert target.latest_result().type == Result.Type.FAILED  # type: ignore[union-attr]
    others = [job for job in enqueued if job is not target]
    assert [job.get_status() for job in others] == [JobStatus.FINISHED] * 2


def test_cancel_job_stops_an_in_flight_job(queue: Queue, make_worker: MakeWorker) -> None:
    long_job = queue.enqueue(jobs.cancel_aware_job, 30)
    worker = make_worker()

    with running(worker, burst=True) as runner:
        wait_until(lambda: long_job.get_status() == JobStatus.STARTED, 10, "started job")
        assert worker.cancel_job("not-running-here") is False
        assert worker.cancel_job(long_job.id) is True
        runner.join(10)

    assert long_job.get_status() == JobStatus.STOPPED
    assert long_job.id in FailedJobRegistry(queue=queue)
    assert long_job.get_meta()["cancelled"] == CANCELLED_TO_STOP


def assert_stopped_before_it_ran(job: Job, queue: Queue) -> None:
    assert job.get_status() == JobStatus.STOPPED
    assert job.id in FailedJobRegistry(queue=queue)
    assert "cancelled" not in job.get_meta()  # cancel_aware_job never ran


def test_a_stop_that_comes_between_claim_and_start_stops_the_job(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dequeue thread claims the job before the loop has it in flight: a stop in between is
    # kept for it, and it never runs.
    job = queue.enqueue(jobs.cancel_aware_job, 30)
    worker = make_worker()
    real_reorder = worker.reorder_queues
    answers = []

    def reorder_queues(reference_queue):  # in the dequeue thread, just after the claim
        answers.append(worker.cancel_job(job.id))  # handled on the loop, meanwhile
        assert worker._starting[job.id] is True
        return real_reorder(reference_queue=reference_queue)

    monkeypatch.setattr(worker, "reorder_queues", reorder_queues)
    worker.work(burst=True)

    assert answers == [True]
    assert_stopped_before_it_ran(job, queue)
    assert worker._starting == {}


def test_a_stop_that_comes_while_the_job_is_starting_stops_it(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In flight, its start on its way to Redis: the stop waits for the start, and it never runs.
    job = queue.enqueue(jobs.cancel_aware_job, 30)
    worker = make_worker()
    real_start = bookkeeping.start_transaction
    answers = []

    def start_transaction(w, started_job, *args, **kwargs):
        answers.append(w.cancel_job(started_job.id))  # on the loop, as a stop command is
        return real_start(w, started_job, *args, **kwargs)

    monkeypatch.setattr(bookkeeping, "start_transaction", start_transaction)
    worker.work(burst=True)

    assert answers == [True]
    assert_stopped_before_it_ran(job, queue)


def test_no_idle_state_while_a_job_is_starting(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    worker = make_worker()
    worker.register_birth()
    worker.set_state(WorkerStatus.BUSY)
    worker._starting["started-in-redis"] = False
    worker._mark_idle()
    assert worker_field(redis_conn, worker, "state") == "busy"
    del worker._starting["started-in-redis"]
    worker._mark_idle()
    assert worker_field(redis_conn, worker, "state") == "idle"


def test_a_job_whose_result_is_kept_for_no_time_releases_its_dependents(
    queue: Queue, make_worker: MakeWorker
) -> None:
    # rq deletes such a job, its list of dependents with it: rq's own path moves them first.
    parent = queue.enqueue(jobs.sleep_job, 0, result_ttl=0)
    child = queue.enqueue(jobs.sleep_job, 0, depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED

    make_worker().work(burst=True)

    assert child.get_status() == JobStatus.FINISHED
    assert not Job.exists(parent.id, connection=queue.connection)


def test_forced_shutdown_tells_the_job_it_is_requeued(
    queue: Queue, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.cancel_aware_job, 30)
    worker = make_worker()

    with running(worker) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "started job")
        worker.request_shutdown(force=True)
        runner.join(10)

    assert job.get_status() == JobStatus.QUEUED
    assert job.get_meta()["cancelled"] == CANCELLED_TO_REQUEUE


def test_heartbeats_keep_a_job_longer_than_the_ttl_alive(
    queue: Queue, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sleep_job, 4)
    worker = make_worker(heartbeat_interval=0.5, heartbeat_ttl=2)
    started = StartedJobRegistry(queue=queue)

    with running(worker, burst=True) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "started job")
        began = time.monotonic()
        heartbeat_age = None
        # What any other worker's maintenance does; it must not reap a job that is heartbeating.
        while runner.thread.is_alive():
            started.cleanup()
            if heartbeat_age is None and time.monotonic() - began > 3:
                executions = job.get_executions()
                assert len(executions) == 1
                heartbeat_age = (now() - executions[0].last_heartbeat).total_seconds()
            time.sleep(0.2)
        runner.join()

    # Past the TTL the execution was still there, heartbeated within the last interval or so.
    assert heartbeat_age is not None
    assert heartbeat_age < 1.5
    assert job.get_status() == JobStatus.FINISHED
    assert job.id not in FailedJobRegistry(queue=queue)


def test_burst_worker_exits_when_queue_is_empty(make_worker: MakeWorker) -> None:
    started = time.monotonic()
    assert make_worker().work(burst=True) is False
    assert time.monotonic() - started < 5


def test_worker_stops_claiming_after_max_jobs(queue: Queue, make_worker: MakeWorker) -> None:
    for _ in range(5):
        queue.enqueue(jobs.noop_job)

    assert make_worker(concurrency=1).work(max_jobs=2) is True

    assert FinishedJobRegistry(queue=queue).count == 2
    assert queue.count == 3


def spy_on_trips(worker: ConcurrentWorker, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record what each trip to the dequeue thread returned (jobs claimed, or a marker)."""
    trips: list[object] = []
    real_claim = worker._claim

    def claim(timeout, room):
        trips.append(real_claim(timeout, room))
        return trips[-1]

    monkeypatch.setattr(worker, "_claim", claim)
    return trips


def test_jobs_waiting_in_the_queue_are_claimed_in_one_trip(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueued = [queue.enqueue(jobs.sleep_job, 0.2) for _ in range(10)]
    worker = make_worker(concurrency=50)
    trips = spy_on_trips(worker, monkeypatch)

    assert worker.work(burst=True) is True

    assert trips[0] == 10
    assert sorted(FinishedJobRegistry(queue=queue).get_job_ids()) == sorted(j.id for j in enqueued)


def test_a_trip_claims_no_more_jobs_than_free_slots(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(10):
        queue.enqueue(jobs.track_concurrency_job, "concurrency", 0.2)
    worker = make_worker(concurrency=4)
    trips = spy_on_trips(worker, monkeypatch)

    worker.work(burst=True)

    assert trips[0] == 4
    assert redis_conn.zscore("concurrency:max", "max") == 4
    assert FinishedJobRegistry(queue=queue).count == 10
    assert queue.connection.llen(queue.intermediate_queue_key) == 0


def test_a_dequeue_failing_within_a_trip_keeps_the_jobs_claimed_before_it(
    queue: Queue,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    enqueued = [queue.enqueue(jobs.noop_job) for _ in range(3)]
    worker = make_worker()
    trips = spy_on_trips(worker, monkeypatch)
    real_dequeue = worker._dequeue
    calls = []

    def dequeue(timeout):
        calls.append(timeout)
        if len(calls) == 2:  # the trip's second, before it pops anything
            raise RuntimeError("broken on purpose")
        return real_dequeue(timeout)

    monkeypatch.setattr(worker, "_dequeue", dequeue)
    assert worker.work(burst=True) is True

    assert trips[0] == 1
    assert "dequeue failed" in caplog.text
    assert "broken on purpose" in caplog.text
    assert sorted(FinishedJobRegistry(queue=queue).get_job_ids()) == sorted(j.id for j in enqueued)


def test_a_job_claimed_within_a_trip_after_shutdown_began_goes_back_unstarted(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = queue.enqueue(jobs.sleep_job, 0.2)
    second = queue.enqueue(jobs.sleep_job, 0)
    worker = make_worker()
    real_dequeue = worker._dequeue

    def dequeue(timeout):
        if timeout is None:  # the trip's second claim: shutdown begins just before it
            worker.request_shutdown()
        return real_dequeue(timeout)

    monkeypatch.setattr(worker, "_dequeue", dequeue)
    with running(worker) as runner:
        runner.join(20)

    assert first.get_status() == JobStatus.FINISHED
    assert second.get_status() == JobStatus.QUEUED
    assert queue.get_job_ids() == [second.id]
    assert queue.connection.llen(queue.intermediate_queue_key) == 0


def test_shutdown_command_drains_and_stops(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sleep_job, 1)
    worker = make_worker()

    with running(worker) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "started job")
        send_shutdown_command(redis_conn, worker.name)
        assert runner.join(15) is True

    assert job.get_status() == JobStatus.FINISHED


def test_worker_refuses_a_heartbeat_ttl_not_above_the_interval(make_worker: MakeWorker) -> None:
    worker = make_worker(heartbeat_interval=2, heartbeat_ttl=2)

    with pytest.raises(ValueError, match="heartbeat_ttl"):
        worker.work(burst=True)


def test_stop_execution_command_cancels_that_execution(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker
) -> None:
    job = queue.enqueue(jobs.sleep_job, 30)
    worker = make_worker()

    with running(worker, burst=True) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "started job")
        execution = wait_until(lambda: job.get_executions(), 10, "execution")[0]
        send_stop_execution_command(redis_conn, job.id, execution.id)
        runner.join(10)

    assert job.get_status() == JobStatus.STOPPED


def test_job_claimed_during_shutdown_goes_back_unstarted(
    queue: Queue, make_worker: MakeWorker
) -> None:
    worker = make_worker()

    with running(worker) as runner:
        worker.request_shutdown()
        # Usually lands in the dequeue already blocked in BLMOVE, which then must give it back.
        job = queue.enqueue(jobs.sleep_job, 0)
        runner.join(10)

    assert job.get_status() == JobStatus.QUEUED
    assert queue.get_job_ids() == [job.id]
    assert queue.connection.llen(queue.intermediate_queue_key) == 0


def test_forced_shutdown_requeues_a_job_that_ignores_cancellation(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("predictions.worker.concurrent.CANCEL_GRACE_SECONDS", 0.5)
    job = queue.enqueue(jobs.ignore_cancel_job, 30)
    worker = make_worker()

    with running(worker) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "started job")
        worker.request_shutdown(force=True)
        runner.join(10)

    assert job.get_status() == JobStatus.QUEUED
    assert queue.get_job_ids() == [job.id]
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []


def test_abandoned_jobs_handler_setting_receives_the_ids(
    make_worker: MakeWorker, request: pytest.FixtureRequest
) -> None:
    try:
        settings = request.getfixturevalue("settings")
    except pytest.FixtureLookupError:
        pytest.skip("needs pytest-django's settings fixture")
    settings.WORKER_ABANDONED_JOBS_HANDLER = "tests.integration.worker.jobs.remember_abandoned"
    jobs.ABANDONED.clear()

    make_worker().on_abandoned_jobs(["lost-1", "lost-2"])

    assert jobs.ABANDONED == [["lost-1", "lost-2"]]


def test_worker_trims_finished_jobs_to_remove_on_count(make_worker, queue, settings) -> None:
    from predictions.worker import bookkeeping

    settings.REMOVE_ON_COUNT = None  # the worker's own periodic trim stays out of this test
    enqueued = [queue.enqueue(jobs.sleep_job, 0) for _ in range(12)]
    worker = make_worker()
    worker.work(burst=True)
    registry = FinishedJobRegistry(queue.name, connection=queue.connection)
    assert registry.count == 12
    assert bookkeeping.trim_registries(worker, 5) == 7
    assert registry.count == 5
    kept = set(registry.get_job_ids())
    gone = [job for job in enqueued if job.id not in kept]
    assert len(gone) == 7
    assert not any(queue.connection.exists(job.key) for job in gone)
    assert all(queue.connection.exists(f"rq:job:{job_id}") for job_id in kept)


def test_rescue_requeues_a_job_a_cut_off_dequeue_stranded(
    queue: Queue, make_worker: MakeWorker
) -> None:
    from predictions.worker import bookkeeping

    job = queue.enqueue(jobs.sleep_job, 0)
    # What rq's dequeue does first; a connection lost right after leaves the id here.
    queue.connection.lmove(queue.key, queue.intermediate_queue_key)
    worker = make_worker()

    assert bookkeeping.rescue_stranded(worker, grace_seconds=0) == []  # first seen: wait
    assert bookkeeping.rescue_stranded(worker, grace_seconds=60) == []  # not long enough
    assert bookkeeping.rescue_stranded(worker, grace_seconds=0) == [job.id]

    assert queue.get_job_ids() == [job.id]
    assert queue.connection.llen(queue.intermediate_queue_key) == 0
    worker.work(burst=True)
    assert job.get_status() == JobStatus.FINISHED


def test_rescue_leaves_started_jobs_and_drops_ended_ones(
    queue: Queue, make_worker: MakeWorker
) -> None:
    from predictions.worker import bookkeeping

    started = queue.enqueue(jobs.sleep_job, 0)
    ended = queue.enqueue(jobs.sleep_job, 0)
    for _ in range(2):
        queue.connection.lmove(queue.key, queue.intermediate_queue_key)
    started.set_status(JobStatus.STARTED)
    ended.set_status(JobStatus.CANCELED)
    worker = make_worker()

    bookkeeping.rescue_stranded(worker, grace_seconds=0)
    assert bookkeeping.rescue_stranded(worker, grace_seconds=0) == []

    assert queue.get_job_ids() == []
    assert [as_text(j) for j in queue.connection.lrange(queue.intermediate_queue_key, 0, -1)] == [
        started.id
    ]


def test_a_success_whose_connection_broke_is_recorded_once_redis_answers(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    # A plain success is committed on the loop's pipelined connection: a connection Redis has
    # dropped meanwhile fails that commit, which is retried on a new one.
    warm_up = queue.enqueue(jobs.sleep_job, 0)
    job = queue.enqueue(jobs.sleep_job, 1)
    worker = make_worker()

    with running(worker, burst=True) as runner:
        wait_until(lambda: job.get_status() == JobStatus.STARTED, 10, "the job started")
        assert warm_up.get_status() == JobStatus.FINISHED  # its success opened the connection
        pipe = worker._pipe
        assert pipe is not None
        redis_conn.client_kill_filter(_type="normal", skipme=True)
        runner.join(20)

    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 1
    assert job.id in FinishedJobRegistry(queue=queue)
    assert worker_field(redis_conn, worker, "successful_job_count") == "2"
    assert f"Redis unreachable, recording job {job.id} again" in caplog.text


def break_first_start(
    worker: ConcurrentWorker, monkeypatch: pytest.MonkeyPatch, *, after_it_landed: bool
) -> list[str]:
    """Make the worker's first start transaction fail as a Redis restart does: its reply lost
    after Redis ran it (`after_it_landed`), or before it reached Redis. Return the failures."""
    real_pipe = worker._command_pipe
    broken: list[str] = []

    class CutOff:
        def __init__(self, pipe):
            self.pipe = pipe

        async def transaction(self, commands):
            starts = any(c[0] == "ZADD" for c in commands)  # the start registers its execution
            if starts and not broken:
                broken.append("start")
                if after_it_landed:
                    await self.pipe.transaction(commands)
                raise redis.exceptions.ConnectionError("Connection closed by server.")
            return await self.pipe.transaction(commands)

        def __getattr__(self, name):
            return getattr(self.pipe, name)

    monkeypatch.setattr(worker, "_command_pipe", lambda: CutOff(real_pipe()))
    return broken


@pytest.mark.parametrize("after_it_landed", [True, False], ids=["reply lost", "not sent"])
def test_a_start_that_redis_cut_off_is_sent_again_and_the_job_runs(
    queue: Queue,
    redis_conn: Redis,
    make_worker: MakeWorker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    after_it_landed: bool,
) -> None:
    job = queue.enqueue(jobs.sleep_job, 0.1)
    worker = make_worker()
    broken = break_first_start(worker, monkeypatch, after_it_landed=after_it_landed)

    assert worker.work(burst=True) is True

    assert broken == ["start"]
    assert f"Redis unreachable, starting job {job.id} again" in caplog.text
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 0.1
    assert StartedJobRegistry(queue=queue).count == 0  # no execution left to be taken for lost
    assert redis_conn.llen(queue.intermediate_queue_key) == 0
    assert worker_field(redis_conn, worker, "successful_job_count") == "1"


def test_a_start_waits_for_the_state_lock_in_a_thread_not_on_the_loop(
    queue: Queue, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = queue.enqueue(jobs.sleep_job, 0)
    worker = make_worker()
    real_reorder = worker.reorder_queues

    def reorder_queues(reference_queue):  # in the dequeue thread, just after the claim
        # Taken as while an IDLE write waits for a Redis that does not answer.
        worker._state_lock.acquire()
        return real_reorder(reference_queue=reference_queue)

    monkeypatch.setattr(worker, "reorder_queues", reorder_queues)
    with running(worker, burst=True) as runner:
        wait_until(lambda: worker.in_flight_job_ids() == [job.id], 10, "the job in flight")
        assert worker._on_loop(lambda: "answered") == "answered"  # the loop goes on
        assert job.get_status() == JobStatus.QUEUED  # its start waits for the lock
        worker._state_lock.release()
        runner.join(20)

    assert job.get_status() == JobStatus.FINISHED


def test_a_claim_cut_short_after_the_pop_leaves_nothing_starting(
    queue: Queue, redis_conn: Redis, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = queue.enqueue(jobs.sleep_job, 0)
    worker = make_worker()
    real_version = worker.get_redis_server_version
    calls = []

    def get_redis_server_version():  # in the dequeue thread, after the job left its queue
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("cut off")
        return real_version()

    monkeypatch.setattr(worker, "get_redis_server_version", get_redis_server_version)
    with running(worker) as runner:
        wait_until(lambda: calls, 10, "the claim cut short")
        # Stranded in the intermediate queue until the sweep requeues it (for any worker: not
        # necessarily this one), heartbeat_ttl (3 s) later at the earliest; nothing is starting.
        wait_until(lambda: worker._starting == {}, 2, "nothing starting")
        wait_until(lambda: job.get_status() == JobStatus.FINISHED, 30, "the job rescued and run")
        wait_until(lambda: worker_field(redis_conn, worker, "state") == "idle", 10, "worker idle")
        worker.request_shutdown()
        runner.join(20)
