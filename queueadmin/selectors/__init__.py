"""Reads of the queue dashboard: queue and worker stats, job pages, job detail (bounded Redis work).

Every read costs a fixed number of Redis round trips, whatever the queues hold: counts come from
LLEN/ZCARD, lists fetch only the ids of one page, and the commands of a step go in one pipeline.
`queue_overview` costs 3 round trips, `job_page` 2, `job_detail` 3. The database is the durable
record: a job's row comes from its Prediction (one query per page), and the outcome states of
Flowsite's queue (finished, failed, cancelled) are read from the predictions' status, because rq's
registries only know whether the job function returned, raised or was stopped.
"""

from .common import (
    ACTIVE_PANEL_SIZE,
    CANCELLED,
    DEFERRED,
    EVENT_LOG_LIMIT,
    FAILED,
    FINISHED,
    MAX_PAGE_SIZE,
    OUTCOME_STATES,
    PAGE_SIZE,
    RECENT_PANEL_SIZE,
    RUNNING,
    SCHEDULED,
    STATES,
    WAITING,
    is_flowsite_queue,
    queue_key,
    registry_key,
    worker_key,
)
from .jobs import JobDetail, JobFilter, JobPage, JobRow, job_detail, job_page
from .overview import (
    LocalOverview,
    Overview,
    QueueStats,
    Throughput,
    WorkerInfo,
    _worker_info,
    local_overview,
    queue_overview,
    redis_counters,
    stale_after_seconds,
)

__all__ = [
    "ACTIVE_PANEL_SIZE",
    "CANCELLED",
    "DEFERRED",
    "EVENT_LOG_LIMIT",
    "FAILED",
    "FINISHED",
    "MAX_PAGE_SIZE",
    "OUTCOME_STATES",
    "PAGE_SIZE",
    "RECENT_PANEL_SIZE",
    "RUNNING",
    "SCHEDULED",
    "STATES",
    "WAITING",
    "JobDetail",
    "JobFilter",
    "JobPage",
    "JobRow",
    "LocalOverview",
    "Overview",
    "QueueStats",
    "Throughput",
    "WorkerInfo",
    "_worker_info",
    "is_flowsite_queue",
    "job_detail",
    "job_page",
    "local_overview",
    "queue_key",
    "queue_overview",
    "redis_counters",
    "registry_key",
    "stale_after_seconds",
    "worker_key",
]
