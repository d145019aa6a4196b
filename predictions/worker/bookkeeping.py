"""Sync rq bookkeeping for the concurrent worker: start, success, heartbeats, abandoned-job sweeps,
stop, requeue.

Every function here talks to Redis with blocking redis-py calls, so the worker runs them in its
helper threads, never on the event loop. Each call builds and executes its own pipeline, except
`success_transaction`, which only builds one (the worker commits it from the loop).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rq import worker_registration
from rq.callbacks import execute_stopped_callback
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.rate_limit import release_slot
from rq.registry import StartedJobRegistry
from rq.utils import as_text, current_timestamp, now
from rq.worker import WorkerStatus

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.queue import Queue

    from .concurrent import ConcurrentWorker

logger = logging.getLogger(__name__)

STOPPED_EXC_STRING = "Job stopped by user, task cancelled."
SWEEP_LOCK_TEMPLATE = RQ_KEY_PREFIX + ":flowsite:abandoned-sweep:{0}"


def start_transaction(
    worker: ConcurrentWorker,
    job: Job,
    queue: Queue,
    remove_from_intermediate_queue: bool,
    *,
    wait: bool = True,
) -> tuple[Pipeline, Execution] | None:
    """rq's two start steps (`prepare_execution`, then the horse's `prepare_job_execution`) as
    one transaction instead of two, not executed: the execution and its registries, the job
    STARTED and persisted, its id out of the intermediate queue, and the worker BUSY unless it
    is already. The caller adds the execution to `worker.executions` once it is committed.

    Leaves out what the worker's heartbeat tick renews anyway (the worker key's TTL and
    `last_heartbeat`) and the job's separate `last_heartbeat` write (STARTED sets it too).

    The worker's state is read under its state lock: an IDLE written before has landed, and a
    later one waits until nothing is starting or in flight (this job counts as either already).
    With `wait` False, returns None instead of waiting for the lock (the event loop's case: the
    holder may be writing to a Redis that does not answer). Sent later from the loop, the BUSY
    can land after a SUSPENDED that the dequeue thread wrote meanwhile (rare, and only Redis's
    copy of the state: the next change of state corrects it).
    """
    if not worker._state_lock.acquire(blocking=wait):
        return None
    pipeline = worker.connection.pipeline()
    try:
        if worker.get_state() != WorkerStatus.BUSY:
            worker.set_state(WorkerStatus.BUSY, pipeline=pipeline)
    finally:
        worker._state_lock.release()
    execution = Execution.create(
        job, worker.get_heartbeat_ttl(job), pipeline=pipeline, worker_name=worker.name
    )
    job.prepare_for_execution(worker.name, pipeline=pipeline)
    pipeline.persist(job.key)
    if remove_from_intermediate_queue:
        pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
    return pipeline, execution


def commands(pipeline: Pipeline) -> list[tuple[Any, ...]]:
    """The commands a pipeline holds, to be sent some other way (`CommandPipe.transaction`)."""
    return [args for args, _ in pipeline.command_stack]


def success_transaction(
    worker: ConcurrentWorker, job: Job, execution: Execution, return_value: object
) -> Pipeline | None:
    """The transaction that records a job's success as rq's `_finalize_success` does, in one
    transaction where rq takes four round trips; not executed. None for a job that needs rq's
    own path (a `Retry` result, a success callback, repeats, a result kept for 0 s: rq
    deletes such a job, its dependents' list with it, so only its WATCHed read finds them).

    rq reads the job's dependents under WATCH before it commits. Here the transaction counts
    them instead (its last command), and only a job that has some hands them to rq's move
    afterwards (`after_success`): a dependent enqueued after the commit sees the job FINISHED
    and is enqueued at once by rq itself.
    """
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    if (
        isinstance(return_value, Retry)
        or job.success_callback is not None
        or job.repeats_left
        or result_ttl == 0
    ):
        return None
    job.ended_at = now()
    job._result = return_value
    job._status = JobStatus.FINISHED
    pipeline = worker.connection.pipeline()
    worker.increment_successful_job_count(pipeline=pipeline)
    worker.increment_total_working_time(job.ended_at - job.started_at, pipeline)  # type: ignore[operator]
    job._handle_success(
        result_ttl,
        pipeline=pipeline,
        worker_name=worker.name,
        execution_id=execution.id,
        execution_started_at=execution.created_at,
        execution_ended_at=job.ended_at,
    )
    job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
    worker.cleanup_execution(job, pipeline=pipeline, execution=execution)
    pipeline.scard(job.dependents_key)
    return pipeline


def needs_after_success(job: Job, dependents: int) -> bool:
    """Whether `after_success` has Redis or HTTP work to do (else it only logs)."""
    return bool(dependents or job.has_rate_limit or job.webhooks)


def after_success(worker: ConcurrentWorker, job: Job, queue: Queue, dependents: int) -> None:
    """What follows a committed success: its dependents, its rate-limit slot, its webhooks.
    Only logs its failures: the success is recorded, and must not be again."""
    if dependents:
        try:
            queue.enqueue_ready_jobs_by_queue(queue.move_dependents_to_ready(job))
        except Exception:  # as rq's _enqueue_dependents_safely
            logger.exception("job %s: finished, but its dependents could not be enqueued", job.id)
    try:
        release_slot(job)
        job.send_webhooks(JobStatus.FINISHED)
    except Exception:
        logger.exception("job %s: finished, but its rate-limit slot or webhooks failed", job.id)
    worker.log.info(
        "Successfully completed job %s in %ss on worker %s",
        job.id,
        job.ended_at - job.started_at,  # type: ignore[operator]
        worker.name,
    )


def send_heartbeats(worker: ConcurrentWorker, beats: Sequence[tuple[Job, Execution]]) -> None:
    """Extend the worker key and every in-flight execution by `heartbeat_ttl`, in one pipeline.

    Refreshes what rq's `maintain_heartbeats` refreshes for one job (execution hash, its
    StartedJobRegistry score, the job's execution registry and `last_heartbeat`), for all of them.
    """
    ttl = worker.heartbeat_ttl
    with worker.connection.pipeline() as pipeline:
        worker.heartbeat(ttl, pipeline=pipeline)
        # HSET answers 1 when it created the field, i.e. the hash was gone: an execution or job
        # that finished between the snapshot and this pipeline. Those are deleted again below.
        created_probes: list[tuple[int, str]] = []
        timestamp = now()
        for job, execution in beats:
            created_probes.append((len(pipeline), execution.key))
            execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
            created_probes.append((len(pipeline), job.key))
            job.heartbeat(timestamp, ttl, pipeline=pipeline, xx=True)
        results = pipeline.execute()

        for index, key in created_probes:
            if results[index] == 1:
                pipeline.delete(key)
        if results[0] == 1:
            # The worker hash expired (a stall longer than the TTL): register the worker again.
            pipeline.hset(worker.key, mapping=worker.serialize())
            pipeline.expire(worker.key, ttl)
            worker_registration.register(worker, pipeline)
        if len(pipeline):
            pipeline.execute()


def sweep_abandoned(worker: ConcurrentWorker) -> list[str]:
    """Fail (or retry) jobs whose executions stopped heartbeating; return their ids.

    Runs rq's own `StartedJobRegistry.cleanup` (AbandonedJobError, failure callbacks, the worker's
    exception handlers, retries) for each of the worker's queues. A short lock per queue lets one
    worker of the fleet sweep per heartbeat interval, so a job is not failed twice.
    """
    lock_ms = max(100, int(worker.heartbeat_interval * 1000 * 0.9))
    abandoned: list[str] = []
    for queue in worker.queues:
        lock_key = SWEEP_LOCK_TEMPLATE.format(queue.name)
        if not worker.connection.set(lock_key, worker.name, nx=True, px=lock_ms):
            continue
        registry = StartedJobRegistry(
            queue.name,
            connection=worker.connection,
            job_class=worker.job_class,
            serializer=worker.serializer,
            death_penalty_class=worker.death_penalty_class,
        )
        cutoff = current_timestamp()
        expired = list(dict.fromkeys(registry.get_expired_job_ids(cutoff)))
        if not expired:
            continue
        with worker.connection.pipeline(transaction=False) as pipeline:
            for job_id in expired:
                pipeline.hget(worker.job_class.key_for(job_id), "status")
            statuses = pipeline.execute()
        # Only STARTED jobs are abandoned; other entries are leftovers rq drops silently.
        started = [
            job_id
            for job_id, status in zip(expired, statuses, strict=True)
            if status is not None and as_text(status) == JobStatus.STARTED
        ]
        registry.cleanup(cutoff, exception_handlers=worker._exc_handlers)
        if started:
            logger.warning(
                "worker %s: jobs abandoned by a lost worker on queue %s: %s",
                worker.name,
                queue.name,
                ", ".join(started),
            )
            abandoned.extend(started)
    return abandoned


def record_stopped(
    worker: ConcurrentWorker, job: Job, queue: Queue, execution: Execution | None
) -> None:
    """Record a cancelled job as rq records a stopped one: status STOPPED, in FailedJobRegistry."""
    logger.warning("worker %s: job %s stopped, moving it to FailedJobRegistry", worker.name, job.id)
    job.ended_at = now()
    try:
        execute_stopped_callback(job, worker.death_penalty_class)
    except Exception:
        logger.exception("worker %s: stopped callback of job %s raised", worker.name, job.id)
    # handle_job_failure marks the job STOPPED (not FAILED, never retried) when this matches;
    # the attribute is thread-local on ConcurrentWorker, so concurrent failures don't see it.
    worker._stopped_job_id = job.id
    worker.handle_job_failure(job, queue=queue, exc_string=STOPPED_EXC_STRING, execution=execution)


def requeue_execution(
    worker: ConcurrentWorker, job: Job, queue: Queue, execution: Execution | None
) -> None:
    """Put a started job back at the head of its queue, status QUEUED, its execution removed."""
    with worker.connection.pipeline() as pipeline:
        if execution is not None:
            worker.cleanup_execution(job, pipeline=pipeline, execution=execution)
        pipeline.lrem(queue.intermediate_queue_key, 0, job.id)
        job.started_at = None
        job.ended_at = None
        job.worker_name = None
        # A rate-limited job keeps its slot while QUEUED, as with rq's own retries.
        queue._enqueue_job(job, pipeline=pipeline, at_front=True)
        pipeline.execute()
    logger.warning("worker %s: job %s requeued at the head of %s", worker.name, job.id, queue.name)


def return_to_queue(worker: ConcurrentWorker, job: Job, queue: Queue) -> None:
    """Undo a dequeue that was never started: move the job id back to the head of its queue."""
    with worker.connection.pipeline() as pipeline:
        pipeline.lrem(queue.intermediate_queue_key, 0, job.id)
        queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
        pipeline.execute()
    logger.info("worker %s: job %s returned unstarted to %s", worker.name, job.id, queue.name)


STRANDED_SEEN_TEMPLATE = RQ_KEY_PREFIX + ":flowsite:stranded-seen:{0}"
# Moves a job id from the intermediate queue back to the head of its queue if it is still there
# and still QUEUED (a job that is gone or ended is only dropped from the list): atomic, so two
# sweeping workers never push it twice, and a started job is left to the abandoned-job sweep.
_RESCUE_SCRIPT = """
local status = redis.call('HGET', KEYS[3], 'status')
if status == 'started' then return 0 end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[4])
if status ~= 'queued' then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""


def rescue_stranded(worker: ConcurrentWorker, grace_seconds: float) -> list[str]:
    """Requeue jobs left in a queue's intermediate list by a dequeue that Redis cut short.

    rq's dequeue moves a job id to the intermediate queue, then fetches the job and registers
    it as started; a connection lost in between (a Redis restart) strands the id there, and rq's
    own cleanup fails it only minutes later. A job that has sat there, not started, for longer
    than `grace_seconds` (far longer than a dequeue takes) goes back to the head of its queue,
    unchanged, for any worker to run. Returns the ids it requeued.
    """
    rescue = worker.connection.register_script(_RESCUE_SCRIPT)
    rescued: list[str] = []
    for queue in worker.queues:
        job_ids = [
            as_text(j) for j in worker.connection.lrange(queue.intermediate_queue_key, 0, -1)
        ]
        for job_id in job_ids:
            seen_key = STRANDED_SEEN_TEMPLATE.format(job_id)
            first_seen = worker.connection.get(seen_key)
            if first_seen is None:
                worker.connection.set(
                    seen_key, current_timestamp(), nx=True, ex=int(grace_seconds) * 10 + 60
                )
                continue
            if current_timestamp() - float(first_seen) < grace_seconds:
                continue
            keys = [
                queue.intermediate_queue_key,
                queue.key,
                worker.job_class.key_for(job_id),
                seen_key,
            ]
            if rescue(keys=keys, args=[job_id]):
                rescued.append(job_id)
    if rescued:
        logger.warning(
            "worker %s: requeued jobs a cut-off dequeue left unstarted: %s",
            worker.name,
            ", ".join(rescued),
        )
    return rescued


TRIM_LOCK_TEMPLATE = "flowsite:trim-lock:{}"
# Jobs removed per registry per sweep, so one sweep stays short however large the backlog.
TRIM_BATCH = 1000


def trim_registries(worker: ConcurrentWorker, max_count: int, every_seconds: int = 60) -> int:
    """Keep at most `max_count` finished and failed jobs per queue (REMOVE_ON_COUNT).

    The oldest entries beyond the limit lose their job hash, results and registry entry. One
    worker of the fleet trims a queue per `every_seconds`. Returns how many jobs were removed.
    """
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    removed = 0
    for queue in worker.queues:
        if not worker.connection.set(
            TRIM_LOCK_TEMPLATE.format(queue.name), worker.name, nx=True, ex=every_seconds
        ):
            continue
        for registry_class in (FinishedJobRegistry, FailedJobRegistry):
            registry = registry_class(queue.name, connection=worker.connection)
            excess = min(registry.count - max_count, TRIM_BATCH)
            if excess <= 0:
                continue
            # Scores are expiry times and every job of a registry has the same TTL: lowest = oldest.
            job_ids = [as_text(j) for j in worker.connection.zrange(registry.key, 0, excess - 1)]
            with worker.connection.pipeline(transaction=False) as pipeline:
                for job_id in job_ids:
                    pipeline.delete(worker.job_class.key_for(job_id), f"rq:results:{job_id}")
                pipeline.zrem(registry.key, *job_ids)
                pipeline.execute()
            removed += len(job_ids)
    if removed:
        logger.info(
            "worker %s: removed %s old jobs (REMOVE_ON_COUNT=%s)", worker.name, removed, max_count
        )
    return removed
