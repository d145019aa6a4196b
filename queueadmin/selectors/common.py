"""States, Redis key names and value parsing shared by the dashboard's reads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from rq.defaults import RQ_KEY_PREFIX
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.utils import as_text, utcparse

from predictions.models import PredictionStatus

# --- states ------------------------------------------------------------------------------------

WAITING, RUNNING, SCHEDULED, DEFERRED = "waiting", "running", "scheduled", "deferred"
FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
STATES = (WAITING, RUNNING, SCHEDULED, DEFERRED, FINISHED, FAILED, CANCELLED)
OUTCOME_STATES = (FINISHED, FAILED, CANCELLED)

_REGISTRY_CLASSES = {
    RUNNING: StartedJobRegistry,
    SCHEDULED: ScheduledJobRegistry,
    DEFERRED: DeferredJobRegistry,
    FINISHED: FinishedJobRegistry,
    FAILED: FailedJobRegistry,
    CANCELLED: CanceledJobRegistry,
}
# The prediction status a state stands for when a list is read from the database.
_STATE_STATUS = {
    WAITING: PredictionStatus.QUEUED,
    SCHEDULED: PredictionStatus.QUEUED,
    DEFERRED: PredictionStatus.QUEUED,
    RUNNING: PredictionStatus.RUNNING,
    FINISHED: PredictionStatus.SUCCEEDED,
    FAILED: PredictionStatus.FAILED,
    CANCELLED: PredictionStatus.CANCELLED,
}
_JOB_FIELDS = ("status", "enqueued_at", "started_at", "ended_at", "worker_name", "description")

QUEUES_KEY = Queue.redis_queues_keys
PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
ACTIVE_PANEL_SIZE = 20
RECENT_PANEL_SIZE = 10
EVENT_LOG_LIMIT = 500


def queue_key(name: str) -> str:
    return Queue.redis_queue_namespace_prefix + name


def registry_key(name: str, state: str) -> str:
    return _REGISTRY_CLASSES[state].key_template.format(name)


def worker_key(name: str) -> str:
    return f"{RQ_KEY_PREFIX}:worker:{name}"


def is_flowsite_queue(name: str) -> bool:
    return name in settings.RQ_QUEUES


def _text(value: Any) -> str:
    return as_text(value) if value is not None else ""


def _when(value: Any) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        return utcparse(text)
    except ValueError:
        return None


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _dedupe(ids: Any) -> list[str]:
    return list(dict.fromkeys(ids))
