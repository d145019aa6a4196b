"""Run rq jobs as concurrent asyncio tasks on one event loop while keeping rq's records truthful.

Contract of `ConcurrentWorker`. It reuses rq internals (`_finalize_success`, `_finalize_failure`,
`_stopped_job_id`, `Queue._enqueue_job`), so rq is pinned to 3.0.0 and tests/integration/worker
exercises each of them.

- One event loop for the worker's life; up to `concurrency` jobs run at once as tasks. `async def`
  job functions are awaited on the loop, sync ones run in their own daemon thread; both see their
  own job through `rq.get_current_job()`.
- rq's bookkeeping (the start steps, the success/failure/retry handlers, Results, Executions,
  counters) never blocks the loop: rq's own, in helper threads, except that a job's two start
  steps are one transaction (`bookkeeping.start_transaction`) and so is a plain success
  (`bookkeeping.success_transaction`; one with a Retry result, a callback or repeats takes
  rq's). These two are built by rq's own calls and committed from the loop on a pipelined
  connection (`predictions.redispipe`), together with the other jobs' writes of the moment.
  The dequeue thread only claims jobs (rq's `dequeue_any`): when jobs wait in the queue, up to
  DEQUEUE_BATCH in one trip, each handed to the loop as soon as it is claimed.
  The worker is BUSY while any job runs and IDLE when none does.
- `job.timeout` (the queue class's default when unset, none when -1) is enforced with
  `asyncio.timeout`; a job over it fails with rq's `JobTimeoutException`.
- Heartbeats and the abandoned-job bound: every `heartbeat_interval` seconds
  (WORKER_HEARTBEAT_SECONDS, default 10) each in-flight execution is extended by `heartbeat_ttl`
  seconds (default 3 x interval = 30). In the same tick one worker of the fleet sweeps each queue's
  StartedJobRegistry with rq's own cleanup, so a job of a worker that died (SIGKILL, OOM, lost
  host) is failed with `AbandonedJobError` (or retried, if it has retries left) at most
  `abandoned_job_bound` = heartbeat_ttl + heartbeat_interval seconds (40 s by default) after that
  worker's last heartbeat, provided some ConcurrentWorker serves the queue. The sweeping worker
  then calls `on_abandoned_jobs(job_ids)` (by default the WORKER_ABANDONED_JOBS_HANDLER setting);
  a job's rq `on_failure` callback also receives `AbandonedJobError`, whoever runs the cleanup.
  Heartbeats come from the loop: a job that blocks the loop for longer than the TTL makes its
  neighbours look abandoned, which `/readyz` reports as loop lag first. After a Redis outage
  nobody could heartbeat, so a worker that saw one sweeps again only `abandoned_job_bound`
  seconds after Redis answered again: live workers heartbeat first, and their jobs are not
  taken for abandoned (the bound then counts from Redis's return).
- Redis outages: dequeues back off (at most REDIS_BACKOFF_MAX_SECONDS between tries) and
  starting a job and recording its outcome are retried for up to BOOKKEEPING_RETRY_SECONDS, so a
  Redis restart delays jobs instead of failing them. A job whose dequeue Redis cut short (its
  id left in rq's intermediate queue, never started) is put back at the head of its queue by the
  next sweep after `heartbeat_ttl` seconds (`bookkeeping.rescue_stranded`), instead of waiting
  for rq's cleanup to fail it minutes later.
- Stop: `cancel_job(job_id)`, rq's `send_stop_job_command` and `send_stop_execution_command`
  cancel that job's task, whichever execution it is; the job is recorded as rq records a stopped
  job (status STOPPED, in FailedJobRegistry, never retried). A job whose task is cancelled any
  other way is recorded the same way. Inside the job, the CancelledError's message is
  CANCELLED_TO_STOP or CANCELLED_TO_REQUEUE (shutdown, below).
- Shutdown: the first SIGTERM/SIGINT (or rq's shutdown command, or `request_shutdown()`) stops
  claiming and lets in-flight jobs finish for `shutdown_timeout` seconds (WORKER_SHUTDOWN_TIMEOUT,
  default 30); then, or at once on a second signal, what is left is cancelled and requeued at the
  head of its queue with status QUEUED, for another worker. A job claimed while shutting down goes
  back unstarted. `work()` then returns normally (exit status 0).
- `/healthz` and `/readyz` on `health_port` (WORKER_PORT), see `predictions.worker.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from rq.command import handle_command, parse_payload
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.timeouts import BaseDeathPenalty
from rq.utils import import_attribute, now
from rq.worker import BaseWorker, DequeueStrategy, WorkerStatus, signal_name

from predictions.redispipe import CommandPipe, connection_like

from . import bookkeeping
from .config import close_django_connections, close_http_client, django_configured, setting
from .health import HealthServer, check_django_database, readiness_client
from .loopbridge import LoopBridge
from .perform import perform

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline


logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONCURRENCY = 100
DEFAULT_HEARTBEAT_SECONDS = 10
DEFAULT_SHUTDOWN_TIMEOUT = 30
# Short, so that shutdown never waits long on a blocked dequeue (rq's own blocks ~405 s).
DEQUEUE_TIMEOUT_SECONDS = 1.0
# Most jobs one trip to the dequeue thread claims: the first when it comes, the others only if
# they are waiting already. Each goes to the loop as soon as it is claimed.
DEQUEUE_BATCH = 32
# After cancelling, how long to wait for tasks to record their outcome before giving up on them.
CANCEL_GRACE_SECONDS = 10.0
LOOP_LAG_PROBE_SECONDS = 0.25
SUSPENSION_CHECK_SECONDS = 1.0
COMMAND_REPLY_TIMEOUT_SECONDS = 5.0
# Longest pause between dequeue attempts while Redis is unreachable.
REDIS_BACKOFF_MAX_SECONDS = 5.0
# How long recording a job's outcome is retried while Redis is unreachable.
BOOKKEEPING_RETRY_SECONDS = 60.0
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# The message of the CancelledError a job sees when the worker cancels it, so job code can tell a
# stop (record the prediction cancelled) from a shutdown requeue (leave it for the next worker).
CANCELLED_TO_STOP = "flowsite-worker:stop"
CANCELLED_TO_REQUEUE = "flowsite-worker:requeue"

_SUSPENDED = object()


class _Phase(enum.Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    FINALIZING = "finalizing"


class _CancelReason(enum.Enum):
    STOP = "stop"
    REQUEUE = "requeue"


@dataclass(eq=False)
class _InFlight:
    job: Job
    queue: Queue
    task: asyncio.Task[None] | None = None
    execution: Execution | None = None
    phase: _Phase = _Phase.PREPARING
    cancel_reason: _CancelReason | None = None
    cancel_sent: bool = False


class _NoDeathPenalty(BaseDeathPenalty):
    """Run rq callbacks without a hard limit: they run in helper threads, where SIGALRM can't."""

    def setup_death_penalty(self) -> None:
        return None

    def cancel_death_penalty(self) -> None:
        return None


class ConcurrentWorker(BaseWorker):
    """An rq worker that runs up to `concurrency` jobs at once as tasks on one event loop.

    Accepts every argument rq's workers and django-rq's `rqworker` pass, plus keyword overrides of
    the Django settings it reads (`concurrency`: WORKER_CONCURRENCY, `shutdown_timeout`:
    WORKER_SHUTDOWN_TIMEOUT, `heartbeat_interval`: WORKER_HEARTBEAT_SECONDS, `health_port`:
    WORKER_PORT, `health_host`: WORKER_HEALTH_HOST), `heartbeat_ttl`, `health_redis` (the client
    /readyz pings), `check_database` (None: when Django is configured) and `bookkeeping_threads`.
    """

    death_penalty_class = _NoDeathPenalty
    # rq's "result is kept for N seconds" line, after every job, is noise at this rate.
    log_result_lifespan = False

    def __init__(
        self,
        queues: Any,
        name: str | None = None,
        *,
        concurrency: int | None = None,
        shutdown_timeout: float | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_ttl: int | None = None,
        health_port: int | None = None,
        health_host: str | None = None,
        health_redis: Redis | None = None,
        check_database: bool | None = None,
        bookkeeping_threads: int = 8,
        **kwargs: Any,
    ) -> None:
        # Before BaseWorker.__init__, which assigns _stopped_job_id (thread-local here).
        self._thread_state = threading.local()
        super().__init__(queues, name, **kwargs)
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._concurrency = concurrency
        self._shutdown_timeout = shutdown_timeout
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_ttl = heartbeat_ttl
        self._health_port = health_port
        self._health_host = health_host
        self._health_redis = health_redis
        self._check_database = check_database
        self._bookkeeping_threads = bookkeeping_threads

        self._in_flight: dict[_InFlight, None] = {}
        # Jobs the dequeue thread claimed that are not in flight yet, by id (True once a
        # stop was asked for): no IDLE is written while there are any, and a stop waits for them.
        self._starting: dict[str, bool] = {}
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bridge: LoopBridge | None = None
        self._pipe: CommandPipe | None = None  # rq's Redis, pipelined (see _record_success)
        self._wakeup = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._forced = False
        self._give_up_at: float | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._side_tasks: set[asyncio.Future[Any]] = set()
        self._claimed = 0
        self._loop_lag = 0.0
        self._lag_probe_due: float | None = None
        self._suspension_checked_at = 0.0
        self._suspended = False
        # Loop times: since when heartbeats reach Redis without a stall (None: they don't),
        # and of the last one that did.
        self._redis_ok_since: float | None = float("-inf")
        self._last_beat: float | None = None
        self.health_server: HealthServer | None = None

    # --- configuration (Django settings read lazily, constructor arguments win) -------------------

    @property
    def concurrency(self) -> int:
        if self._concurrency is not None:
            return self._concurrency
        return int(setting("WORKER_CONCURRENCY", DEFAULT_CONCURRENCY))

    @property
    def shutdown_timeout(self) -> float:
        if self._shutdown_timeout is not None:
            return float(self._shutdown_timeout)
        return float(setting("WORKER_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT))

    @property
    def heartbeat_interval(self) -> float:
        if self._heartbeat_interval is not None:
            return float(self._heartbeat_interval)
        return float(setting("WORKER_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS))

    @property
    def heartbeat_ttl(self) -> int:
        """Seconds an execution stays alive without a heartbeat (whole seconds, as rq scores)."""
        if self._heartbeat_ttl is not None:
            return int(self._heartbeat_ttl)
        interval = self.heartbeat_interval
        return max(math.ceil(3 * interval), math.ceil(interval) + 2)

    @property
    def abandoned_job_bound(self) -> float:
        """Most seconds after a dead worker's last heartbeat until its jobs are failed/retried."""
        return self.heartbeat_ttl + self.heartbeat_interval

    @property
    def health_port(self) -> int:
        if self._health_port is not None:
            return self._health_port
        return int(setting("WORKER_PORT", 0))

    @property
    def health_host(self) -> str:
        if self._health_host is not None:
            return self._health_host
        return str(setting("WORKER_HEALTH_HOST", "0.0.0.0"))

    # --- live state ----------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The worker's event loop while `work()` runs."""
        return self._loop

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def in_flight_job_ids(self) -> list[str]:
        return [record.job.id for record in list(self._in_flight)]

    @property
    def is_shutting_down(self) -> bool:
        return self._stopping

    @property
    def loop_lag(self) -> float:
        """Seconds the loop is (or just was) late; a stall still in progress counts too."""
        if self._loop is None or self._lag_probe_due is None:
            return 0.0
        return max(self._loop_lag, self._loop.time() - self._lag_probe_due)

    # --- hooks and control (thread-safe) ---------------------------------------------------------

    def on_abandoned_jobs(self, job_ids: list[str]) -> None:
        """React to jobs of lost workers that this worker's sweep just failed (or retried).

        Calls the function named by the WORKER_ABANDONED_JOBS_HANDLER setting (a dotted path)
        with the job ids, if set; override in a subclass instead if you prefer. Runs in a helper
        thread after rq recorded the failures: the sync ORM is fine, keep it short.
        """
        handler_path = setting("WORKER_ABANDONED_JOBS_HANDLER", None)
        if handler_path:
            import_attribute(handler_path)(job_ids)

    def cancel_job(self, job_id: str) -> bool:
        """Cancel in-flight job `job_id` and record it STOPPED; False if it isn't running here.

        Callable from the worker's loop or any thread.
        """
        return bool(self._on_loop(self._stop_job, job_id))

    def request_shutdown(self, force: bool = False) -> None:
        """Begin a graceful shutdown (a forced one with `force`), as SIGTERM does; thread-safe."""
        self._call_soon(self._shutdown, force)

    # --- rq overrides ----------------------------------------------------------------------------

    @property
    def _stopped_job_id(self) -> str | None:  # type: ignore[override]
        # handle_job_failure reads and clears it; per thread, so concurrent failures don't mix.
        return getattr(self._thread_state, "stopped_job_id", None)

    @_stopped_job_id.setter
    def _stopped_job_id(self, value: str | None) -> None:
        self._thread_state.stopped_job_id = value

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout or self.heartbeat_ttl, pipeline=pipeline)

    def prepare_execution(self, job: Job) -> Execution:
        # Serialised with _mark_idle so an IDLE write can never land after a newer BUSY.
        with self._state_lock:
            return super().prepare_execution(job)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.request_shutdown(force=self._stopping)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        self.request_shutdown(force=True)

    def request_stop_execution(self, execution_id: str) -> None:
        self._call_soon(
            self._cancel_where,
            lambda r: r.execution is not None and r.execution.id == execution_id,
            _CancelReason.STOP,
        )

    def handle_payload(self, message: dict[str, Any]) -> None:
        """Handle a pubsub command (pubsub thread); stop-job works for every in-flight job."""
        try:
            payload = parse_payload(message)
            command = payload.get("command")
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("worker %s: ignoring malformed command %r", self.name, message)
            return
        if command == "stop-job":
            job_id = str(payload.get("job_id") or "")
            logger.info("worker %s: stop requested for job %s", self.name, job_id)
            self._call_soon(self._stop_job, job_id)
        elif command == "stop-execution":
            logger.info("worker %s: stop requested for job %s", self.name, payload.get("job_id"))
            self.request_stop_execution(str(payload.get("execution_id") or ""))
        elif command == "shutdown":
            logger.info("worker %s: shutdown command received", self.name)
            self.request_shutdown()
        elif command == "kill-horse":
            logger.info("worker %s: kill-horse ignored, jobs are tasks: use stop-job", self.name)
        else:
            handle_command(self, payload)

    # --- main loop -------------------------------------------------------------------------------

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        """Run jobs until shut down (or, with `burst`, until the queues are empty and idle).

        Returns whether any job was claimed.
        """
        if self.heartbeat_ttl < self.heartbeat_interval + 1:
            raise ValueError("heartbeat_ttl must exceed heartbeat_interval by at least 1 s")
        self._dequeue_strategy = dequeue_strategy
        loop = asyncio.new_event_loop()
        self._loop, self._bridge = loop, LoopBridge(loop)
        self._bookkeeping = ThreadPoolExecutor(self._bookkeeping_threads, "rq-bookkeeping")
        self._maintenance = ThreadPoolExecutor(1, "rq-maintenance")
        self._dequeuer = ThreadPoolExecutor(1, "rq-dequeue")
        try:
            self.bootstrap(logging_level, date_format, log_format)
            try:
                if with_scheduler:
                    self._start_scheduler(burst, logging_level, date_format, log_format)
                loop.run_until_complete(self._main(burst, max_jobs, max_idle_time))
            finally:
                self._end_leftover_jobs(loop)
                # Let a heartbeat or sweep that is still running end before the worker's death.
                self._maintenance.shutdown(wait=True, cancel_futures=True)
                self.teardown()
        finally:
            self._close_loop(loop)
        return self._claimed > 0

    async def _main(self, burst: bool, max_jobs: int | None, max_idle_time: int | None) -> None:
        logger.info(
            "worker %s: running up to %d jobs at once; heartbeat %.1f s, abandoned jobs "
            "detected within %.0f s",
            self.name,
            self.concurrency,
            self.heartbeat_interval,
            self.abandoned_job_bound,
        )
        if not self._bridge.install_signal_handlers(self._on_signal):  # type: ignore[union-attr]
            logger.debug("worker %s: not the main thread, no signal handlers", self.name)
        await self._in_thread(self._bookkeeping, self._mark_idle)
        background = [
            asyncio.create_task(self._maintain(), name="rq-heartbeat"),
            asyncio.create_task(self._probe_loop_lag(), name="rq-loop-lag"),
        ]
        try:
            await self._start_health_server()
            try:
                await self._admit(burst, max_jobs, max_idle_time)
            except Exception:
                # Don't abandon running jobs because admission broke: drain them, then re-raise.
                logger.exception("worker %s: admission failed, shutting down", self.name)
                self._shutdown(force=False)
                await self._drain()
                raise
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.gather(*self._side_tasks, return_exceptions=True)
            if self.health_server is not None:
                await self.health_server.stop()
            await self._close_job_database_connections()
            self._bridge.remove_signal_handlers()  # type: ignore[union-attr]
        logger.info("worker %s: stopped after claiming %d job(s)", self.name, self._claimed)

    async def _close_job_database_connections(self) -> None:
        """Close the connections jobs' async ORM calls opened in asgiref's shared DB thread."""
        if not django_configured():
            return
        from asgiref.sync import sync_to_async
        from django.db import connections

        try:
            await sync_to_async(connections.close_all)()
        except Exception:
            logger.exception("worker %s: closing database connections failed", self.name)

    async def _admit(self, burst: bool, max_jobs: int | None, max_idle_time: int | None) -> None:
        """Claim jobs while a slot is free, until stopped (or empty in burst mode)."""
        loop = asyncio.get_running_loop()
        timeout = None if burst else DEQUEUE_TIMEOUT_SECONDS
        idle_since = loop.time()
        backoff = 1.0
        limit = self.concurrency
        while not self._stopping:
            self._wakeup.clear()
            room = limit - len(self._in_flight)
            if max_jobs is not None:
                room = min(room, max_jobs - self._claimed)
            if room <= 0:
                await self._wakeup.wait()
                continue
            try:
                claimed = await self._in_thread(self._dequeuer, self._claim, timeout, room)
            except REDIS_DOWN as exc:
                logger.error(
                    "worker %s: cannot reach Redis to dequeue (%s), retrying in %.0f s",
                    self.name,
                    exc,
                    backoff,
                )
                await self._pause(backoff)
                backoff = min(backoff * 2, self.max_connection_wait_time, REDIS_BACKOFF_MAX_SECONDS)
                continue
            except Exception:
                logger.exception("worker %s: dequeue failed", self.name)
                await self._pause(1.0)
                continue
            backoff = 1.0
            if claimed is _SUSPENDED:
                if burst:
                    logger.info("worker %s: suspended in burst mode, quitting", self.name)
                    break
                await self._pause(SUSPENSION_CHECK_SECONDS)
                continue
            if not claimed:
                if self._in_flight:
                    idle_since = loop.time()
                if burst:
                    if not self._in_flight:
                        logger.info("worker %s: queues empty, nothing in flight: done", self.name)
                        break
                    await self._wakeup.wait()
                elif max_idle_time is not None and loop.time() - idle_since >= max_idle_time:
                    logger.info("worker %s: idle for %d s, quitting", self.name, max_idle_time)
                    break
                continue
            # The claimed jobs are started (or, once stopping, put back) by `_take` already.
            idle_since = loop.time()
            if max_jobs is not None and self._claimed >= max_jobs:
                logger.info("worker %s: claimed %d job(s) (max_jobs)", self.name, self._claimed)
                break

    def _claim(self, timeout: float | None, room: int) -> int | object:
        """Claim up to `room` jobs (DEQUEUE_BATCH at most) and hand each to the loop as soon as
        it is claimed (the dequeue thread); return how many, or _SUSPENDED.

        The first is waited for up to `timeout` seconds; the others are taken only if they are
        in the queue already. One trip to the thread per job (and one back to the loop) had made
        the dequeue the worker's bottleneck: about 8 ms a job on a busy machine, so at 125 jobs/s
        they queued in Redis while slots were free.
        """
        claimed = self._dequeue(timeout)
        count = 0
        while isinstance(claimed, tuple):
            job, queue = claimed
            if self._bridge is None or not self._bridge.call_soon(self._take, job, queue):
                # The loop is gone: the job stays in the intermediate queue, and the sweep puts
                # it back in its queue.
                logger.warning("worker %s: stopped, job %s left to the sweep", self.name, job.id)
                break
            count += 1
            if count >= min(room, DEQUEUE_BATCH):
                break
            try:
                claimed = self._dequeue(None)
            except REDIS_DOWN as exc:  # the next trip meets it again, and backs off
                logger.warning("worker %s: cannot reach Redis to dequeue (%s)", self.name, exc)
                break
            except Exception:
                logger.exception("worker %s: dequeue failed", self.name)
                break
        if claimed is _SUSPENDED and not count:
            return _SUSPENDED
        return count

    def _take(self, job: Job, queue: Queue) -> None:
        """Start a job the dequeue thread claimed; put it back once shutdown has begun."""
        if self._stopping:
            self._spawn(self._put_back(job, queue))
        else:
            self._start(job, queue)

    def _dequeue(self, timeout: float | None) -> tuple[Job, Queue] | object | None:
        """Claim one job, blocking at most `timeout` seconds (the dequeue thread); the loop
        starts it (`_start_execution`)."""
        if time.monotonic() - self._suspension_checked_at >= SUSPENSION_CHECK_SECONDS:
            self._suspension_checked_at = time.monotonic()
            self._update_suspension(is_suspended(self.connection, self))
        if self._suspended:
            return _SUSPENDED
        try:
            claimed = self.queue_class.dequeue_any(
                self._ordered_queues,
                timeout,  # type: ignore[arg-type]  # BLMOVE/BLPOP take fractional seconds
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None
        if claimed is None:
            return None
        job, queue = claimed
        self._starting[job.id] = False  # until _start (or _put_back) takes it over
        try:
            self.reorder_queues(reference_queue=queue)
            job.redis_server_version = self.get_redis_server_version()
        except BaseException:
            # Not handed to the loop: the sweep requeues it from the intermediate queue.
            self._starting.pop(job.id, None)
            raise
        logger.info("worker %s: job %s claimed from %s", self.name, job.id, queue.name)
        return job, queue

    def _update_suspension(self, suspended: bool) -> None:
        if suspended == self._suspended:
            return
        self._suspended = suspended
        with self._state_lock:
            if suspended:
                logger.info("worker %s: suspended, run `rq resume` to resume", self.name)
                self.set_state(WorkerStatus.SUSPENDED)
            else:
                logger.info("worker %s: resumed", self.name)
                busy = self._starting or self._in_flight
                self.set_state(WorkerStatus.BUSY if busy else WorkerStatus.IDLE)

    async def _put_back(self, job: Job, queue: Queue) -> None:
        """Return a job that a dequeue claimed after shutdown began, so it is not lost."""
        self._starting.pop(job.id, None)
        try:
            await self._in_thread(self._bookkeeping, bookkeeping.return_to_queue, self, job, queue)
        except Exception:
            logger.exception(
                "worker %s: could not return job %s; rq's intermediate-queue cleanup will fail it",
                self.name,
                job.id,
            )

    def _start(self, job: Job, queue: Queue) -> None:
        record = _InFlight(job=job, queue=queue)
        self._in_flight[record] = None  # before it leaves _starting (see _mark_idle)
        if self._starting.pop(job.id, False):
            record.cancel_reason = _CancelReason.STOP  # stopped while it was starting
        self._claimed += 1
        record.task = asyncio.get_running_loop().create_task(
            self._run(record), name=f"rq-job:{job.id}"
        )

    # --- one job ---------------------------------------------------------------------------------

    async def _run(self, record: _InFlight) -> None:
        job, queue = record.job, record.queue
        try:
            try:
                record.execution = await self._start_execution(job, queue)
            except REDIS_DOWN as exc:
                # Not started after BOOKKEEPING_RETRY_SECONDS of trying: the id stays in the
                # intermediate queue (or, if a start did reach Redis, its execution stops
                # heartbeating); the sweep requeues it or fails it as lost, so it is neither
                # run twice nor left waiting.
                logger.warning(
                    "worker %s: could not start job %s, Redis unreachable (%s); the sweep "
                    "requeues it",
                    self.name,
                    job.id,
                    exc,
                )
                return
            except Exception:
                # As rq's perform_job: a failure to start is the job's failure.
                logger.exception("worker %s: could not start job %s", self.name, job.id)
                record.phase = _Phase.FINALIZING
                await self._finish(
                    job, self._finalize_failure, job, queue, record.execution, sys.exc_info()
                )
                return
            if record.cancel_reason is not None:
                record.phase = _Phase.FINALIZING
                await self._record_cancelled(record)
                return
            record.phase = _Phase.RUNNING
            await self._perform_and_record(record)
        finally:
            self._in_flight.pop(record, None)
            self._wakeup.set()
            # No loop: a task abandoned at shutdown, collected after the loop closed.
            if not self._in_flight and self._loop is not None and self._loop.is_running():
                self._spawn(self._in_thread(self._bookkeeping, self._mark_idle))

    async def _start_execution(self, job: Job, queue: Queue) -> Execution:
        """rq's two preparation steps, in one transaction (built in a helper thread while the
        state lock is taken), committed from the loop on the pipelined connection.

        While Redis is unreachable the same transaction is sent again, for up to
        BOOKKEEPING_RETRY_SECONDS: a start whose reply a Redis restart cut off may have landed
        (the same commands again change nothing then), and giving up left such a job STARTED
        with nobody running it, for the sweep to fail as lost. The job stays in flight
        meanwhile, without a heartbeat until it is started.
        """
        single_queue = len(self.queues) == 1
        started = bookkeeping.start_transaction(self, job, queue, single_queue, wait=False)
        if started is None:
            started = await self._in_thread(
                self._bookkeeping, bookkeeping.start_transaction, self, job, queue, single_queue
            )
            assert started is not None  # waited for the lock
        transaction, execution = started
        commands = bookkeeping.commands(transaction)
        await self._while_redis_down(
            lambda: self._command_pipe().transaction(commands), f"starting job {job.id}"
        )
        self.executions[execution.id] = execution
        return execution

    async def _perform_and_record(self, record: _InFlight) -> None:
        job, queue = record.job, record.queue
        try:
            return_value = await perform(job, self.queue_class.DEFAULT_TIMEOUT)
        except asyncio.CancelledError:
            record.phase = _Phase.FINALIZING
            task = asyncio.current_task()
            if record.cancel_sent and task is not None:
                task.uncancel()
            await self._record_cancelled(record)
            return
        except Exception:
            record.phase = _Phase.FINALIZING
            await self._finish(
                job, self._finalize_failure, job, queue, record.execution, sys.exc_info()
            )
            return
        record.phase = _Phase.FINALIZING
        assert record.execution is not None
        success = bookkeeping.success_transaction(self, job, record.execution, return_value)
        if success is None:  # rq's own path
            await self._finish(
                job, self._finalize_success, job, queue, record.execution, return_value
            )
        else:
            await self._finish_with(job, lambda: self._record_success(job, queue, success))

    async def _record_cancelled(self, record: _InFlight) -> None:
        job = record.job
        if record.cancel_reason is _CancelReason.REQUEUE:
            step = bookkeeping.requeue_execution
        else:
            step = bookkeeping.record_stopped
        await self._finish(job, step, self, job, record.queue, record.execution)

    async def _record_success(self, job: Job, queue: Queue, transaction: Pipeline) -> None:
        """Commit a success's transaction on this loop (batched with the loop's other Redis
        writes: no helper thread, no round trip of its own), then what follows it."""
        replies = await self._command_pipe().transaction(bookkeeping.commands(transaction))
        dependents = replies[-1]
        if bookkeeping.needs_after_success(job, dependents):
            await self._in_thread(
                self._bookkeeping, bookkeeping.after_success, self, job, queue, dependents
            )
        else:
            bookkeeping.after_success(self, job, queue, dependents)

    def _command_pipe(self) -> CommandPipe:
        """The loop's pipelined connection to rq's Redis (made at first use, on the loop)."""
        if self._pipe is None:
            retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3)
            self._pipe = CommandPipe(connection_like(self.connection, retry))
        return self._pipe

    async def _finish(self, job: Job, step: Callable[..., Any], *args: Any) -> None:
        """Record a job's outcome with `step` in a helper thread (see `_finish_with`)."""
        await self._finish_with(job, lambda: self._in_thread(self._bookkeeping, step, *args))

    async def _finish_with(self, job: Job, attempt: Callable[[], Awaitable[Any]]) -> None:
        """Record a job's outcome; a failure leaves it to the abandoned sweep.

        While Redis is unreachable the step is retried (for BOOKKEEPING_RETRY_SECONDS): the job
        stays in flight, so it keeps its heartbeat once Redis is back, and is not taken for one
        a dead worker left.
        """
        try:
            await self._while_redis_down(attempt, f"recording job {job.id}")
        except Exception:
            logger.exception(
                "worker %s: could not record the outcome of job %s; it stays STARTED until the "
                "abandoned-job sweep fails it",
                self.name,
                job.id,
            )

    async def _while_redis_down(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Await `attempt()`, again after a growing pause while Redis is unreachable, for up to
        BOOKKEEPING_RETRY_SECONDS; then, or for any other error, raise it."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + BOOKKEEPING_RETRY_SECONDS
        delay = 0.25
        while True:
            try:
                return await attempt()
            except REDIS_DOWN as exc:
                if loop.time() + delay > give_up_at:
                    raise
                logger.warning(
                    "worker %s: Redis unreachable, %s again in %.2f s (%s)",
                    self.name,
                    what,
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _mark_idle(self) -> None:
        with self._state_lock:
            # _starting before _in_flight: _start fills the second before it empties the first.
            if self._starting or self._in_flight:
                return
            if self.get_state() != WorkerStatus.SUSPENDED:
                self.set_state(WorkerStatus.IDLE)

    # --- cancel and shutdown (on the loop) -------------------------------------------------------

    def _stop_job(self, job_id: str) -> bool:
        if job_id in self._starting:  # started in Redis, not in flight yet: stopped when it is
            self._starting[job_id] = True
            logger.info(
                "worker %s: cancelling job %s (stop) once it is in flight", self.name, job_id
            )
            return True
        return self._cancel_where(lambda r: r.job.id == job_id, _CancelReason.STOP)

    def _cancel_where(self, predicate: Callable[[_InFlight], bool], reason: _CancelReason) -> bool:
        matched = [record for record in list(self._in_flight) if predicate(record)]
        cancelled = [record for record in matched if self._cancel(record, reason)]
        if not cancelled:
            logger.info(
                "worker %s: nothing to %s: no matching job in flight", self.name, reason.value
            )
        return bool(cancelled)

    def _cancel(self, record: _InFlight, reason: _CancelReason) -> bool:
        if record.phase is _Phase.FINALIZING:
            return False
        # A stop wins over a requeue: a job someone stopped must not come back.
        if record.cancel_reason is None or reason is _CancelReason.STOP:
            record.cancel_reason = reason
        logger.info("worker %s: cancelling job %s (%s)", self.name, record.job.id, reason.value)
        if record.phase is _Phase.RUNNING and not record.cancel_sent and record.task is not None:
            record.cancel_sent = True
            stop = record.cancel_reason is _CancelReason.STOP
            record.task.cancel(msg=CANCELLED_TO_STOP if stop else CANCELLED_TO_REQUEUE)
        return True

    def _shutdown(self, force: bool) -> None:
        loop = asyncio.get_running_loop()
        if not self._stopping:
            self._stopping = True
            self._stop_event.set()
            self._wakeup.set()
            self._shutdown_requested_date = now()
            self._spawn(self._in_thread(self._maintenance, self.set_shutdown_requested_date))
            if not force:
                logger.info(
                    "worker %s: warm shutdown: claiming no more jobs, waiting up to %.0f s for "
                    "%d in-flight job(s): %s",
                    self.name,
                    self.shutdown_timeout,
                    len(self._in_flight),
                    ", ".join(self.in_flight_job_ids()) or "-",
                )
                self._drain_timer = loop.call_later(self.shutdown_timeout, self._drain_expired)
        if force and not self._forced:
            logger.warning(
                "worker %s: cold shutdown: cancelling and requeueing %d job(s): %s",
                self.name,
                len(self._in_flight),
                ", ".join(self.in_flight_job_ids()) or "-",
            )
            self._cancel_all()

    def _drain_expired(self) -> None:
        if self._in_flight and not self._forced:
            logger.warning(
                "worker %s: shutdown timeout of %.0f s passed, cancelling and requeueing %d "
                "job(s): %s",
                self.name,
                self.shutdown_timeout,
                len(self._in_flight),
                ", ".join(self.in_flight_job_ids()),
            )
            self._cancel_all()

    def _cancel_all(self) -> None:
        self._forced = True
        self._give_up_at = asyncio.get_running_loop().time() + CANCEL_GRACE_SECONDS
        for record in list(self._in_flight):
            self._cancel(record, _CancelReason.REQUEUE)
        self._wakeup.set()

    async def _drain(self) -> None:
        """Wait for in-flight jobs; after a cancel, give up on stragglers after a grace period."""
        loop = asyncio.get_running_loop()
        if self._in_flight:
            logger.info(
                "worker %s: waiting for %d in-flight job(s)", self.name, len(self._in_flight)
            )
        while self._in_flight:
            self._wakeup.clear()
            wait = None
            if self._give_up_at is not None:
                wait = self._give_up_at - loop.time()
                if wait <= 0:
                    logger.error(
                        "worker %s: job(s) %s did not stop %.0f s after cancellation",
                        self.name,
                        ", ".join(self.in_flight_job_ids()),
                        CANCEL_GRACE_SECONDS,
                    )
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self._stopping:
            logger.info("worker %s: drained, all in-flight jobs are done", self.name)

    # --- background tasks ------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Each heartbeat interval: heartbeats, the abandoned-job sweep, rq's maintenance."""
        loop = asyncio.get_running_loop()
        while True:
            next_tick = loop.time() + self.heartbeat_interval
            # Snapshot on the loop, which owns the in-flight set.
            beats = [(r.job, r.execution) for r in self._in_flight if r.execution is not None]
            if await self._maintenance_step("heartbeat", bookkeeping.send_heartbeats, self, beats):
                self._heartbeat_reached_redis(loop.time())
            else:
                self._redis_ok_since = None
            if (
                self._redis_ok_since is not None
                and loop.time() - self._redis_ok_since >= self.abandoned_job_bound
            ):
                await self._maintenance_step("abandoned-job sweep", self._sweep)
            await self._maintenance_step("maintenance", self._maybe_run_maintenance)
            await self._maintenance_step("retention", self._trim)
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    def _heartbeat_reached_redis(self, at: float) -> None:
        """Note a heartbeat that reached Redis; after a stall, hold the sweep back for a while.

        A stall (a failed heartbeat, or one that came late because redis-py kept retrying while
        Redis restarted) means the other workers could not heartbeat either: their jobs may look
        expired until their next heartbeat, so sweeping now would fail live jobs.
        """
        stalled = self._last_beat is not None and at - self._last_beat > 2 * self.heartbeat_interval
        if stalled or self._redis_ok_since is None:
            self._redis_ok_since = at
            logger.warning(
                "worker %s: heartbeats were late or failing (Redis unreachable or slow); no "
                "abandoned-job sweep for %.0f s",
                self.name,
                self.abandoned_job_bound,
            )
        self._last_beat = at

    async def _maintenance_step(self, label: str, step: Callable[..., Any], *args: Any) -> bool:
        """Run one step in the maintenance thread; return whether it worked."""
        try:
            await self._in_thread(self._maintenance, step, *args)
        except REDIS_DOWN as exc:
            logger.error("worker %s: %s failed, Redis unreachable: %s", self.name, label, exc)
        except Exception:
            logger.exception("worker %s: %s failed", self.name, label)
        else:
            return True
        return False

    def _trim(self) -> None:
        max_count = setting("REMOVE_ON_COUNT", None)
        if max_count:
            bookkeeping.trim_registries(self, int(max_count))

    def _sweep(self) -> None:
        bookkeeping.rescue_stranded(self, grace_seconds=self.heartbeat_ttl)
        abandoned = bookkeeping.sweep_abandoned(self)
        if not abandoned:
            return
        try:
            self.on_abandoned_jobs(abandoned)
        except Exception:
            logger.exception(
                "worker %s: on_abandoned_jobs failed for %s", self.name, ", ".join(abandoned)
            )
        finally:
            close_django_connections()

    def _maybe_run_maintenance(self) -> None:
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()

    async def _probe_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._lag_probe_due = loop.time() + LOOP_LAG_PROBE_SECONDS
            await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
            self._loop_lag = max(0.0, loop.time() - self._lag_probe_due)

    async def _start_health_server(self) -> None:
        port = self.health_port
        if port <= 0:
            return
        if self._check_database is None:
            check_database = django_configured()
        else:
            check_database = self._check_database
        self.health_server = HealthServer(
            self,
            host=self.health_host,
            port=port,
            redis_client=self._health_redis or readiness_client(self.connection),
            database_check=check_django_database if check_database else None,
        )
        await self.health_server.start()

    # --- plumbing --------------------------------------------------------------------------------

    async def _in_thread(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _spawn(self, awaitable: Any) -> None:
        """Run a fire-and-forget step; `_main` awaits what is left before it returns."""
        future = asyncio.ensure_future(awaitable)
        self._side_tasks.add(future)
        future.add_done_callback(self._side_task_done)

    def _side_task_done(self, future: asyncio.Future[Any]) -> None:
        self._side_tasks.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error(
                "worker %s: background step failed", self.name, exc_info=future.exception()
            )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when shutdown begins."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop_event.wait()

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._bridge is None or not self._bridge.call_soon(fn, *args):
            logger.warning("worker %s: not running, %s ignored", self.name, fn.__name__)

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T | None:
        if self._bridge is None:
            return None
        return self._bridge.call(fn, *args, timeout=COMMAND_REPLY_TIMEOUT_SECONDS)

    def _on_signal(self, signum: int) -> None:
        logger.info("worker %s: received %s", self.name, signal_name(signum))
        self._shutdown(force=self._stopping)

    def _end_leftover_jobs(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel tasks that outlived the drain; requeue jobs whose task still won't end.

        Once the loop closes such a job cannot run on, so putting it back is the truthful record.
        One caught recording its outcome is left to the abandoned-job sweep instead.
        """
        for record in self._in_flight:
            record.cancel_reason = record.cancel_reason or _CancelReason.REQUEUE
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            _, pending = loop.run_until_complete(asyncio.wait(leftovers, timeout=1.0))
            for task in pending:
                # Already reported above and handled below; asyncio would log it again at exit.
                task._log_destroy_pending = False  # type: ignore[attr-defined]
        for record in list(self._in_flight):
            if record.phase is _Phase.FINALIZING:
                logger.error(
                    "worker %s: job %s stuck recording its outcome; leaving it to the "
                    "abandoned-job sweep",
                    self.name,
                    record.job.id,
                )
                continue
            try:
                bookkeeping.requeue_execution(self, record.job, record.queue, record.execution)
            except Exception:
                logger.exception(
                    "worker %s: could not requeue job %s; leaving it to the abandoned-job sweep",
                    self.name,
                    record.job.id,
                )

    def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(close_http_client())
        finally:
            for executor in (self._dequeuer, self._maintenance, self._bookkeeping):
                executor.shutdown(wait=False, cancel_futures=True)
            loop.close()
            self._loop = None
