"""Job rows joined with their predictions, pages of jobs per state, and one job's detail."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from predictions.models import Prediction, PredictionStatus
from predictions.secrets import mask_secrets
from predictions.streaming import decode_event, stream_key

from .common import (
    _JOB_FIELDS,
    _REGISTRY_CLASSES,
    _STATE_STATUS,
    EVENT_LOG_LIMIT,
    MAX_PAGE_SIZE,
    OUTCOME_STATES,
    PAGE_SIZE,
    RECENT_PANEL_SIZE,
    STATES,
    WAITING,
    _dedupe,
    _text,
    _uuid_or_none,
    _when,
    is_flowsite_queue,
    queue_key,
    registry_key,
)

# --- job rows and pages ------------------------------------------------------------------------


@dataclass
class JobRow:
    """One job of a list: its Prediction (if any) joined with rq's record (if any)."""

    id: str
    prediction: Prediction | None = None
    rq_status: str = ""
    rq_enqueued_at: datetime | None = None
    rq_started_at: datetime | None = None
    rq_ended_at: datetime | None = None
    rq_worker: str = ""
    description: str = ""
    in_redis: bool = False

    @classmethod
    def from_prediction(cls, prediction: Prediction) -> JobRow:
        return cls(id=str(prediction.id), prediction=prediction)

    def add_job_hash(self, values: list[Any] | None) -> None:
        if not values or not any(values):
            return
        status, enqueued, started, ended, worker, description = values
        self.in_redis = True
        self.rq_status = _text(status)
        self.rq_enqueued_at = _when(enqueued)
        self.rq_started_at = _when(started)
        self.rq_ended_at = _when(ended)
        self.rq_worker = _text(worker)
        self.description = _text(description)

    @property
    def chatflow_name(self) -> str:
        p = self.prediction
        return p.chatflow.name if p is not None else ""

    @property
    def chatflow_id(self) -> str:
        return str(self.prediction.chatflow_id) if self.prediction is not None else ""

    @property
    def question(self) -> str:
        if self.prediction is None:
            return self.description
        return getattr(self.prediction, "question_text", None) or self.prediction.question

    @property
    def status(self) -> str:
        return self.prediction.status if self.prediction is not None else self.rq_status

    @property
    def error_code(self) -> str:
        return self.prediction.error_code if self.prediction is not None else ""

    @property
    def worker(self) -> str:
        return (self.prediction.worker_name if self.prediction else "") or self.rq_worker

    @property
    def enqueued_at(self) -> datetime | None:
        return self.prediction.enqueued_at if self.prediction else self.rq_enqueued_at

    @property
    def started_at(self) -> datetime | None:
        return (self.prediction.started_at if self.prediction else None) or self.rq_started_at

    @property
    def finished_at(self) -> datetime | None:
        return (self.prediction.finished_at if self.prediction else None) or self.rq_ended_at

    @property
    def wait_seconds(self) -> float | None:
        """Seconds from enqueue to start (to now while it waits)."""
        if self.enqueued_at is None:
            return None
        end = self.started_at or (None if self.finished_at else timezone.now())
        return None if end is None else max(0.0, (end - self.enqueued_at).total_seconds())

    @property
    def run_seconds(self) -> float | None:
        """Seconds from start to end (to now while it runs)."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())


def _prediction_rows() -> QuerySet[Prediction]:
    """Predictions with what a list row shows, without loading whole requests."""
    return (
        Prediction.objects.select_related("chatflow")
        .only(
            "id",
            "chatflow__id",
            "chatflow__name",
            "chat_id",
            "status",
            "error_code",
            "attempts",
            "worker_name",
            "enqueued_at",
            "started_at",
            "finished_at",
        )
        .annotate(question_text=KT("request__question"))
    )


def _rows_for_ids(ids: list[str], job_hashes: dict[str, Any]) -> list[JobRow]:
    """Join a page of job ids with their Prediction rows (one query) and rq job hashes."""
    uuids = [u for u in (_uuid_or_none(i) for i in ids) if u is not None]
    predictions = {str(p.id): p for p in _prediction_rows().filter(id__in=uuids)} if uuids else {}
    rows = []
    for job_id in ids:
        row = JobRow(id=job_id, prediction=predictions.get(job_id))
        row.add_job_hash(job_hashes.get(job_id))
        rows.append(row)
    return rows


def _recent_rows() -> list[JobRow]:
    recent = _prediction_rows().filter(
        status__in=(
            PredictionStatus.SUCCEEDED,
            PredictionStatus.FAILED,
            PredictionStatus.CANCELLED,
        )
    )[:RECENT_PANEL_SIZE]
    return [JobRow.from_prediction(p) for p in recent]


@dataclass(frozen=True)
class JobFilter:
    chatflow: str = ""
    chat_id: str = ""
    prediction_id: str = ""

    def __bool__(self) -> bool:
        return bool(self.chatflow or self.chat_id or self.prediction_id)

    def apply(self, queryset: QuerySet[Prediction]) -> QuerySet[Prediction]:
        if self.chatflow:
            chatflow_uuid = _uuid_or_none(self.chatflow)
            if chatflow_uuid is not None:
                queryset = queryset.filter(chatflow_id=chatflow_uuid)
            else:
                queryset = queryset.filter(chatflow__name__icontains=self.chatflow)
        if self.chat_id:
            queryset = queryset.filter(chat_id=self.chat_id)
        if self.prediction_id:
            prediction_uuid = _uuid_or_none(self.prediction_id)
            if prediction_uuid is None:
                return queryset.none()
            queryset = queryset.filter(id=prediction_uuid)
        return queryset


@dataclass
class JobPage:
    queue: str
    state: str
    rows: list[JobRow]
    total: int
    page: int
    per_page: int
    source: str  # "redis": ids from rq's list/registry; "database": predictions' status
    filters: JobFilter = field(default_factory=JobFilter)

    @property
    def num_pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.num_pages


def job_page(
    connection: Redis,
    *,
    queue: str,
    state: str,
    page: int = 1,
    per_page: int = PAGE_SIZE,
    filters: JobFilter | None = None,
) -> JobPage:
    """Return one page of a queue's jobs in `state`, newest first.

    Live states (waiting, running, scheduled, deferred) come from rq: LLEN/ZCARD and the page's
    ids in one round trip, the page's job hashes in a second, then one query for their
    Predictions. Outcome states of Flowsite's queue, and any filtered list, come from the
    predictions (count + page queries) joined with the page's job hashes (one round trip).
    """
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    filters = filters or JobFilter()
    per_page = max(1, min(per_page, MAX_PAGE_SIZE))
    page = max(1, page)
    flowsite = is_flowsite_queue(queue)
    if flowsite and (filters or state in OUTCOME_STATES):
        return _database_page(connection, queue, state, page, per_page, filters)
    return _redis_page(connection, queue, state, page, per_page, filters)


def _redis_page(
    connection: Redis, queue: str, state: str, page: int, per_page: int, filters: JobFilter
) -> JobPage:
    start = (page - 1) * per_page
    with connection.pipeline(transaction=False) as pipe:
        if state == WAITING:
            key = queue_key(queue)
            pipe.llen(key)
            # Jobs are appended on the right: the newest are at the end.
            pipe.lrange(key, -(start + per_page), -(start + 1))
        else:
            key = registry_key(queue, state)
            pipe.zcard(key)
            pipe.zrange(key, start, start + per_page - 1, desc=True)
        total, raw_ids = pipe.execute()
    if state == WAITING:
        raw_ids = list(reversed(raw_ids))
    parse = _REGISTRY_CLASSES[state].parse_job_id if state != WAITING else _text
    ids = _dedupe(parse(raw) for raw in raw_ids)
    rows = _rows_for_ids(ids, _job_hashes(connection, ids))
    return JobPage(queue, state, rows, int(total), page, per_page, "redis", filters)


def _database_page(
    connection: Redis, queue: str, state: str, page: int, per_page: int, filters: JobFilter
) -> JobPage:
    queryset = filters.apply(_prediction_rows().filter(status=_STATE_STATUS[state]))
    if state in OUTCOME_STATES and not filters:
        kept = timezone.now() - timedelta(seconds=settings.REMOVE_ON_AGE)
        queryset = queryset.filter(finished_at__gte=kept)
    order = ("-finished_at",) if state in OUTCOME_STATES else ("-enqueued_at",)
    total = queryset.count()
    start = (page - 1) * per_page
    predictions = list(queryset.order_by(*order)[start : start + per_page])
    ids = [str(p.id) for p in predictions]
    hashes = _job_hashes(connection, ids)
    rows = []
    for prediction in predictions:
        row = JobRow.from_prediction(prediction)
        row.add_job_hash(hashes.get(str(prediction.id)))
        rows.append(row)
    return JobPage(queue, state, rows, total, page, per_page, "database", filters)


def _job_hashes(connection: Redis, ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), _JOB_FIELDS)
        return dict(zip(ids, pipe.execute(), strict=True))


# --- one job -----------------------------------------------------------------------------------


@dataclass
class JobDetail:
    id: str
    prediction: Prediction | None
    request: dict[str, Any]
    answer: str
    job: dict[str, Any]
    traceback: str
    events: list[dict[str, Any]]
    events_total: int
    stream_exists: bool

    @property
    def can_retry(self) -> bool:
        p = self.prediction
        return p is not None and p.status in (PredictionStatus.FAILED, PredictionStatus.CANCELLED)

    @property
    def can_cancel(self) -> bool:
        return self.prediction is not None and self.prediction.can_cancel()

    @property
    def can_remove(self) -> bool:
        return bool(self.job) and self.job.get("status") != "started"


def job_detail(connection: Redis | None, job_id: str) -> JobDetail | None:
    """Return a job's prediction, rq record, error and event log; None if neither exists.

    Costs 3 Redis round trips (job hash, latest result, event stream) in queue mode, none in main
    mode; secrets in the request are masked.
    """
    prediction_uuid = _uuid_or_none(job_id)
    prediction = (
        Prediction.objects.select_related("chatflow").filter(id=prediction_uuid).first()
        if prediction_uuid
        else None
    )
    job_info: dict[str, Any] = {}
    traceback = ""
    events: list[dict[str, Any]] = []
    events_total = 0
    if connection is not None:
        job_info, traceback = _rq_job_info(connection, job_id)
        with connection.pipeline(transaction=False) as pipe:
            pipe.xlen(stream_key(job_id))
            pipe.xrange(stream_key(job_id), count=EVENT_LOG_LIMIT)
            events_total, entries = pipe.execute()
        for entry_id, fields in entries:
            event = decode_event(entry_id, fields)
            events.append({"seq": event["seq"], "event": event["event"], "data": event["data"]})
    if prediction is None and not job_info:
        return None
    request = mask_secrets(prediction.request) if prediction is not None else {}
    answer = ""
    if prediction is not None and isinstance(prediction.result, dict):
        answer = str(prediction.result.get("text", ""))
    return JobDetail(
        id=job_id,
        prediction=prediction,
        request=request,
        answer=answer,
        job=job_info,
        traceback=traceback,
        events=events,
        events_total=int(events_total),
        stream_exists=bool(events_total),
    )


def _rq_job_info(connection: Redis, job_id: str) -> tuple[dict[str, Any], str]:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return {}, ""
    info: dict[str, Any] = {
        "status": getattr(job.get_status(refresh=False), "value", ""),
        "origin": job.origin,
        "worker_name": job.worker_name or "",
        "description": job.description or "",
        "timeout": job.timeout,
        "created_at": job.created_at,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "last_heartbeat": job.last_heartbeat,
        "result_type": "",
    }
    result = job.latest_result()
    traceback = job._exc_info or ""  # what rq keeps when a failure has no Result
    if result is not None:
        info["result_type"] = result.type.name.lower()
        traceback = result.exc_string or traceback
    return info, traceback
