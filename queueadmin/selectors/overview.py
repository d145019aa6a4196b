"""The dashboard's overview: queues by state, workers, throughput, running and recent jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone
from redis import Redis
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    StartedJobRegistry,
)
from rq.suspension import WORKERS_SUSPENDED
from rq.worker_registration import REDIS_WORKER_KEYS

from predictions import local
from predictions.metrics import FLEET_COUNTERS, REDIS_KEY_PREFIX, local_counters
from predictions.models import Prediction, PredictionStatus

from .common import (
    _JOB_FIELDS,
    _REGISTRY_CLASSES,
    ACTIVE_PANEL_SIZE,
    CANCELLED,
    FAILED,
    FINISHED,
    OUTCOME_STATES,
    QUEUES_KEY,
    RUNNING,
    WAITING,
    _dedupe,
    _text,
    _when,
    is_flowsite_queue,
    queue_key,
    registry_key,
    worker_key,
)
from .jobs import JobRow, _prediction_rows, _recent_rows, _rows_for_ids

# --- overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    """Counts of one queue by state; for Flowsite's queue the outcome states are predictions'."""

    name: str
    counts: dict[str, int]
    oldest_waiting_seconds: float | None
    flowsite: bool
    rq_registries: dict[str, int]


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    hostname: str
    pid: int | None
    state: str
    queues: list[str]
    in_flight: int
    successful: int
    failed: int
    last_heartbeat: datetime | None
    birth: datetime | None
    stale: bool
    gone: bool

    @property
    def heartbeat_age(self) -> float | None:
        if self.last_heartbeat is None:
            return None
        return max(0.0, (timezone.now() - self.last_heartbeat).total_seconds())


@dataclass(frozen=True)
class Throughput:
    """Predictions that ended in the last minute and hour (by finished_at)."""

    minute_done: int
    minute_failed: int
    hour_done: int
    hour_failed: int
    hour_cancelled: int

    @staticmethod
    def _rate(failed: int, done: int) -> float | None:
        return None if done == 0 else failed / done

    @property
    def minute_failure_rate(self) -> float | None:
        return self._rate(self.minute_failed, self.minute_done)

    @property
    def hour_failure_rate(self) -> float | None:
        return self._rate(self.hour_failed, self.hour_done)

    @property
    def hour_per_minute(self) -> float:
        return self.hour_done / 60


@dataclass
class Overview:
    """Everything the dashboard shows at once (queue mode)."""

    queues: list[QueueStats]
    workers: list[WorkerInfo]
    paused: bool
    throughput: Throughput
    running: list[JobRow]
    recent: list[JobRow]
    counters: dict[str, int]
    configured_concurrency: int
    stale_after_seconds: float


@dataclass
class LocalOverview:
    """What main mode shows: predictions running inside this web process, and active rows."""

    in_flight_ids: list[str]
    active: list[JobRow]
    throughput: Throughput
    recent: list[JobRow]
    counters: dict[str, int]


def stale_after_seconds() -> float:
    """Seconds without a heartbeat after which a worker is shown stale (its heartbeat TTL)."""
    return float(3 * settings.WORKER_HEARTBEAT_SECONDS)


def _outcome_counts() -> tuple[Throughput, dict[str, int]]:
    """One aggregate query: throughput of the last minute and hour, outcomes in the retention."""
    now = timezone.now()
    minute = now - timedelta(minutes=1)
    hour = now - timedelta(hours=1)
    kept = now - timedelta(seconds=settings.REMOVE_ON_AGE)
    ended = ~Q(status=PredictionStatus.CANCELLED)
    row = Prediction.objects.filter(finished_at__gte=min(hour, kept)).aggregate(
        minute_done=Count("pk", filter=Q(finished_at__gte=minute) & ended),
        minute_failed=Count(
            "pk", filter=Q(finished_at__gte=minute, status=PredictionStatus.FAILED)
        ),
        hour_done=Count("pk", filter=Q(finished_at__gte=hour) & ended),
        hour_failed=Count("pk", filter=Q(finished_at__gte=hour, status=PredictionStatus.FAILED)),
        hour_cancelled=Count(
            "pk", filter=Q(finished_at__gte=hour, status=PredictionStatus.CANCELLED)
        ),
        kept_finished=Count(
            "pk", filter=Q(finished_at__gte=kept, status=PredictionStatus.SUCCEEDED)
        ),
        kept_failed=Count("pk", filter=Q(finished_at__gte=kept, status=PredictionStatus.FAILED)),
        kept_cancelled=Count(
            "pk", filter=Q(finished_at__gte=kept, status=PredictionStatus.CANCELLED)
        ),
    )
    throughput = Throughput(
        minute_done=row["minute_done"],
        minute_failed=row["minute_failed"],
        hour_done=row["hour_done"],
        hour_failed=row["hour_failed"],
        hour_cancelled=row["hour_cancelled"],
    )
    outcomes = {
        FINISHED: row["kept_finished"],
        FAILED: row["kept_failed"],
        CANCELLED: row["kept_cancelled"],
    }
    return throughput, outcomes


def _worker_info(name: str, data: dict[Any, Any], in_flight: int, stale_after: float) -> WorkerInfo:
    fields = {_text(k): _text(v) for k, v in data.items()}
    last = _when(fields.get("last_heartbeat"))
    gone = not fields or bool(fields.get("death"))
    age = (timezone.now() - last).total_seconds() if last else None
    return WorkerInfo(
        name=name,
        hostname=fields.get("hostname", ""),
        pid=int(fields["pid"]) if fields.get("pid", "").isdigit() else None,
        state=fields.get("state", "") or ("gone" if gone else "?"),
        queues=[q for q in fields.get("queues", "").split(",") if q],
        in_flight=in_flight,
        successful=int(fields.get("successful_job_count") or 0),
        failed=int(fields.get("failed_job_count") or 0),
        last_heartbeat=last,
        birth=_when(fields.get("birth")),
        stale=gone or age is None or age > stale_after,
        gone=gone,
    )


def queue_overview(connection: Redis) -> Overview:
    """Read every queue's counts, every worker and the running jobs: 3 Redis round trips.

    1: queue and worker names, the pause flag, the running page's ids and the fleet counters;
    2: per queue LLEN/ZCARD and the head of the waiting list, per worker its hash and in-flight
    count, the running jobs' hashes; 3: the enqueue time of each queue's oldest waiting job.
    Plus three database queries: the outcome aggregate, the running rows, the recent rows.
    """
    main_queue = settings.QUEUE_NAME
    with connection.pipeline(transaction=False) as pipe:
        pipe.smembers(QUEUES_KEY)
        pipe.smembers(REDIS_WORKER_KEYS)
        pipe.exists(WORKERS_SUSPENDED)
        pipe.zrange(registry_key(main_queue, RUNNING), 0, ACTIVE_PANEL_SIZE - 1, desc=True)
        pipe.mget([REDIS_KEY_PREFIX + name for name in FLEET_COUNTERS])
        queue_keys, worker_keys, paused, running_entries, counter_values = pipe.execute()

    prefix = Queue.redis_queue_namespace_prefix
    names = {_text(k)[len(prefix) :] for k in queue_keys if _text(k).startswith(prefix)}
    names.update(settings.RQ_QUEUES)
    queue_names = sorted(names, key=lambda n: (n != main_queue, n))
    worker_names = sorted(_text(k).rsplit(":", 1)[-1] for k in worker_keys)
    running_ids = _dedupe(StartedJobRegistry.parse_job_id(e) for e in running_entries)

    with connection.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.llen(queue_key(name))
            for state in _REGISTRY_CLASSES:
                pipe.zcard(registry_key(name, state))
            pipe.lindex(queue_key(name), 0)
        for name in worker_names:
            pipe.hgetall(worker_key(name))
            pipe.scard(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
        for job_id in running_ids:
            pipe.hmget(Job.key_for(job_id), _JOB_FIELDS)
        results = iter(pipe.execute())

    per_queue: list[tuple[str, dict[str, int], str]] = []
    for name in queue_names:
        counts = {WAITING: int(next(results))}
        for state in _REGISTRY_CLASSES:
            counts[state] = int(next(results))
        per_queue.append((name, counts, _text(next(results))))
    stale_after = stale_after_seconds()
    workers = []
    for name in worker_names:
        data, in_flight = next(results), int(next(results))
        workers.append(_worker_info(name, data, in_flight, stale_after))
    running_jobs = {job_id: next(results) for job_id in running_ids}

    heads = [(name, head) for name, _, head in per_queue if head]
    with connection.pipeline(transaction=False) as pipe:
        for _, head in heads:
            pipe.hget(Job.key_for(head), "enqueued_at")
        enqueued = dict(zip([name for name, _ in heads], pipe.execute(), strict=True))

    throughput, outcomes = _outcome_counts()
    now = timezone.now()
    queues = []
    for name, counts, _ in per_queue:
        flowsite = is_flowsite_queue(name)
        registries = {state: counts[state] for state in OUTCOME_STATES}
        if flowsite:
            counts = {**counts, **outcomes}
        at = _when(enqueued.get(name))
        queues.append(
            QueueStats(
                name=name,
                counts=counts,
                oldest_waiting_seconds=max(0.0, (now - at).total_seconds()) if at else None,
                flowsite=flowsite,
                rq_registries=registries,
            )
        )
    return Overview(
        queues=queues,
        workers=workers,
        paused=bool(paused),
        throughput=throughput,
        running=_rows_for_ids(running_ids, running_jobs),
        recent=_recent_rows(),
        counters=_counter_dict(counter_values),
        configured_concurrency=settings.WORKER_CONCURRENCY,
        stale_after_seconds=stale_after,
    )


def _counter_dict(values: list[Any]) -> dict[str, int]:
    return {name: int(value or 0) for name, value in zip(FLEET_COUNTERS, values, strict=True)}


def local_overview() -> LocalOverview:
    """Main mode: the predictions running in this process, active rows, throughput; no Redis."""
    throughput, _ = _outcome_counts()
    active = _prediction_rows().filter(
        status__in=(PredictionStatus.QUEUED, PredictionStatus.RUNNING)
    )[:ACTIVE_PANEL_SIZE]
    return LocalOverview(
        in_flight_ids=local.in_flight(),
        active=[JobRow.from_prediction(p) for p in active],
        throughput=throughput,
        recent=_recent_rows(),
        counters=local_counters(),
    )


def redis_counters(connection: Redis) -> dict[str, int]:
    """Return the fleet-wide counters the prediction path INCRs (cancel, timeouts, lost)."""
    return _counter_dict(connection.mget([REDIS_KEY_PREFIX + name for name in FLEET_COUNTERS]))
