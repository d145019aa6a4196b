"""GET /api/v1/monitor/job_queue: the queue state as JSON, for superusers."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError

from predictions import clients
from predictions.exceptions import Forbidden, QueueUnavailable, error_response
from queueadmin import selectors

logger = logging.getLogger(__name__)

ACTIVE_IDS_LIMIT = selectors.ACTIVE_PANEL_SIZE


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _job(row: selectors.JobRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "chatflowId": row.chatflow_id or None,
        "status": row.status,
        "worker": row.worker or None,
        "enqueuedAt": _iso(row.enqueued_at),
        "startedAt": _iso(row.started_at),
        "waitSeconds": row.wait_seconds,
        "runSeconds": row.run_seconds,
    }


def _throughput(t: selectors.Throughput) -> dict[str, Any]:
    return {
        "lastMinute": {
            "finished": t.minute_done,
            "failed": t.minute_failed,
            "failureRate": t.minute_failure_rate,
        },
        "lastHour": {
            "finished": t.hour_done,
            "failed": t.hour_failed,
            "cancelled": t.hour_cancelled,
            "failureRate": t.hour_failure_rate,
            "perMinute": round(t.hour_per_minute, 3),
        },
    }


def _counters(counters: dict[str, int]) -> dict[str, Any]:
    return {
        "cancel": {
            "published": counters["cancel_published"],
            "markerHits": counters["cancel_marker_hits"],
            "dispatched": counters["cancel_dispatched"],
        },
        "timeouts": counters["timeouts"],
        "lostJobs": counters["lost_jobs"],
    }


def monitor_job_queue(request: HttpRequest) -> JsonResponse:
    """Return backend, active jobs, per-queue counts, workers and the fleet counters.

    Superusers only (a staff session is not enough): 403 in the API's error shape otherwise.
    """
    user = getattr(request, "user", None)
    if not (user and user.is_active and user.is_superuser):
        return error_response(Forbidden("Only superusers may read the job queue monitor"))
    if settings.MODE != "queue":
        local = selectors.local_overview()
        return JsonResponse(
            {
                "backend": "in-process",
                "mode": settings.MODE,
                "activeJobs": {"count": len(local.in_flight_ids), "ids": local.in_flight_ids},
                "queues": [],
                "workers": [],
                "paused": False,
                "throughput": _throughput(local.throughput),
                **_counters(local.counters),
            }
        )
    try:
        overview = selectors.queue_overview(clients.get_sync_redis())
    except RedisError as exc:
        logger.warning("monitor: Redis unreachable: %s", exc)
        return error_response(QueueUnavailable(f"Redis is unreachable: {type(exc).__name__}"))
    main = next(q for q in overview.queues if q.flowsite)
    return JsonResponse(
        {
            "backend": "rq",
            "mode": settings.MODE,
            "queueName": settings.QUEUE_NAME,
            "paused": overview.paused,
            "activeJobs": {
                "running": main.counts[selectors.RUNNING],
                "waiting": main.counts[selectors.WAITING],
                "jobs": [_job(row) for row in overview.running],
            },
            "queues": [
                {
                    "name": q.name,
                    "counts": q.counts,
                    "rqRegistries": q.rq_registries,
                    "oldestWaitingSeconds": q.oldest_waiting_seconds,
                    "flowsite": q.flowsite,
                }
                for q in overview.queues
            ],
            "workers": [
                {
                    "name": w.name,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "state": w.state,
                    "queues": w.queues,
                    "inFlight": w.in_flight,
                    "successfulJobs": w.successful,
                    "failedJobs": w.failed,
                    "lastHeartbeat": _iso(w.last_heartbeat),
                    "stale": w.stale,
                }
                for w in overview.workers
            ],
            "throughput": _throughput(overview.throughput),
            **_counters(overview.counters),
        }
    )
