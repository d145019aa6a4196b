"""Actions of the queue dashboard: retry, cancel, remove, clean, pause, resume; each one audited.

Each action writes a LogEntry (django.contrib.admin) naming the user and what was done, against
the Prediction when there is one, else against the Dashboard model.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Model
from django.utils import timezone
from redis import Redis
from rq import suspension
from rq.exceptions import NoSuchJobError
from rq.executions import ExecutionRegistry
from rq.job import Job
from rq.results import Result
from rq.utils import as_text, utcparse

from predictions import clients, services
from predictions.exceptions import PredictionError
from predictions.models import Prediction, PredictionStatus
from predictions.streaming import cancel_key, stream_key
from queueadmin import selectors
from queueadmin.models import Dashboard

logger = logging.getLogger(__name__)

RETRYABLE = (PredictionStatus.FAILED, PredictionStatus.CANCELLED)
CLEANABLE_STATES = (selectors.FINISHED, selectors.FAILED)
CLEAN_CHUNK = 500


class ActionRefused(PredictionError):
    """An action that does not apply to the job as it is now (the message says why)."""

    code = "action_refused"
    status = 409


def _audit(*, user, message: str, obj: Model | None = None, object_id: str = "", flag=CHANGE):
    target = obj if obj is not None else Dashboard
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(target, for_concrete_model=False),
        object_id=str(obj.pk) if obj is not None else object_id,
        object_repr=(str(obj) if obj is not None else object_id or "queues")[:200],
        action_flag=flag,
        change_message=message,
    )


def _prediction(prediction_id: str) -> Prediction:
    try:
        return Prediction.objects.select_related("chatflow").get(id=uuid.UUID(prediction_id))
    except (ValueError, Prediction.DoesNotExist):
        raise ActionRefused(
            f"No prediction {prediction_id}", code="not_found", status=404
        ) from None


def _require_queue_mode(action: str) -> Redis:
    if settings.MODE != "queue":
        raise ActionRefused(f"{action} needs MODE=queue: there is no queue in main mode")
    return clients.get_sync_redis()


def _delete_job_records(connection: Redis, job_id: str) -> bool:
    """Delete an rq job with its registry entries and results; False if it didn't exist."""
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    job.delete()
    return True


@transaction.atomic
def job_retry(*, prediction_id: str, user) -> Prediction:
    """Run a failed or cancelled prediction again under the same id.

    Deletes the old rq job, event stream and cancel marker (so readers see a fresh run and no
    worker cancels it at once), resets the row to queued without error, and enqueues the job
    when the transaction commits. Raises ActionRefused for any other status, and while the rq
    job is still STARTED (its worker has not recorded the last run yet).
    """
    connection = _require_queue_mode("Retry")
    prediction = _prediction(prediction_id)
    locked = Prediction.objects.select_for_update().filter(id=prediction.id, status__in=RETRYABLE)
    if not list(locked.values_list("id", flat=True)):
        raise ActionRefused(
            f"Only failed or cancelled predictions can be retried; this one is {prediction.status}"
        )
    if connection.hget(Job.key_for(prediction_id), "status") == b"started":
        # Its worker has not recorded the outcome yet; a late record would land on the new job.
        raise ActionRefused("Its worker is still recording the last run; retry in a moment")
    previous = f"{prediction.status} ({prediction.error_code or '-'})"
    _delete_job_records(connection, prediction_id)
    connection.delete(stream_key(prediction_id), cancel_key(prediction_id))
    locked.update(
        status=PredictionStatus.QUEUED,
        error_code="",
        error_message="",
        result=None,
        worker_name="",
        started_at=None,
        finished_at=None,
        enqueued_at=timezone.now(),
    )
    prediction.refresh_from_db()
    services._enqueue(prediction)  # django-rq enqueues it once this transaction commits
    _audit(user=user, obj=prediction, message=f"Retried from the queue dashboard (was {previous})")
    logger.info("prediction %s retried by %s", prediction_id, user)
    return prediction


def job_cancel(*, prediction_id: str, user) -> str:
    """Cancel a waiting or running prediction as the API does; return its status afterwards."""
    prediction = _prediction(prediction_id)
    if not prediction.can_cancel():
        raise ActionRefused(
            f"Only waiting or running predictions can be cancelled; this one is {prediction.status}"
        )
    status = async_to_sync(services.aprediction_cancel)(prediction=prediction)
    _audit(user=user, obj=prediction, message="Cancelled from the queue dashboard")
    logger.info("prediction %s cancelled by %s", prediction_id, user)
    return status


def job_remove(*, job_id: str, user) -> None:
    """Delete an rq job, its registry entries and results; its Prediction row stays.

    A running job is refused (cancel it first). A waiting prediction is cancelled before its job
    goes, so a client waiting for it gets an answer instead of a timeout.
    """
    connection = _require_queue_mode("Remove")
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        raise ActionRefused(f"No rq job {job_id}", code="not_found", status=404) from None
    if job.get_status(refresh=False) == "started":
        raise ActionRefused("The job is running: cancel it first, then remove it")
    prediction = Prediction.objects.filter(id=_uuid(job_id)).first() if _uuid(job_id) else None
    if prediction is not None and prediction.can_cancel():
        async_to_sync(services.aprediction_cancel)(prediction=prediction)
    job.delete()
    _audit(
        user=user,
        obj=prediction,
        object_id=job_id,
        flag=DELETION if prediction is None else CHANGE,
        message="Removed its rq job from the queue dashboard",
    )
    logger.info("job %s removed by %s", job_id, user)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class CleanResult:
    finished: int
    failed: int

    @property
    def total(self) -> int:
        return self.finished + self.failed


def queue_clean(*, queue: str, older_than: int, user) -> CleanResult:
    """Delete finished and failed rq jobs of `queue` that ended more than `older_than` s ago.

    Removes the job hashes, results, executions and registry entries (entries whose job hash is
    already gone go too); predictions stay in the database. Works in chunks of pipelined calls.
    """
    connection = _require_queue_mode("Clean")
    if older_than < 0:
        raise ActionRefused("older_than must be 0 or more seconds")
    cutoff = timezone.now().timestamp() - older_than
    removed = {
        state: _clean_registry(connection, selectors.registry_key(queue, state), cutoff)
        for state in CLEANABLE_STATES
    }
    result = CleanResult(finished=removed[selectors.FINISHED], failed=removed[selectors.FAILED])
    _audit(
        user=user,
        object_id=f"queue {queue}",
        message=(
            f"Cleaned {result.finished} finished and {result.failed} failed jobs that ended "
            f"more than {older_than} s ago"
        ),
    )
    logger.info("queue %s cleaned by %s: %s jobs", queue, user, result.total)
    return result


def _clean_registry(connection: Redis, key: str, cutoff: float) -> int:
    ids = [as_text(raw) for raw in connection.zrange(key, 0, -1)]
    removed = 0
    for start in range(0, len(ids), CLEAN_CHUNK):
        chunk = ids[start : start + CLEAN_CHUNK]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hget(Job.key_for(job_id), "ended_at")
            ended = pipe.execute()
        doomed = [
            job_id
            for job_id, at in zip(chunk, ended, strict=True)
            if at is None or utcparse(as_text(at)).timestamp() < cutoff
        ]
        if not doomed:
            continue
        with connection.pipeline(transaction=False) as pipe:
            pipe.zrem(key, *doomed)
            for job_id in doomed:
                pipe.delete(
                    Job.key_for(job_id),
                    Result.get_key(job_id),
                    ExecutionRegistry.key_template.format(job_id),
                    Job.dependents_key_for(job_id),
                )
            pipe.execute()
        removed += len(doomed)
    return removed


def queues_pause(*, user) -> None:
    """Suspend every worker of this Redis (rq's suspension: workers stop claiming, running jobs
    finish). rq has no per-queue pause, so this pauses all queues on this Redis."""
    connection = _require_queue_mode("Pause")
    suspension.suspend(connection)
    _audit(user=user, object_id="all queues", message="Paused all queues (rq suspend)")
    logger.info("queues paused by %s", user)


def queues_resume(*, user) -> None:
    """Lift the suspension: workers claim jobs again within about a second."""
    connection = _require_queue_mode("Resume")
    suspension.resume(connection)
    _audit(user=user, object_id="all queues", message="Resumed all queues (rq resume)")
    logger.info("queues resumed by %s", user)
