"""Staff views: parse the request, call selectors or services, render an admin-styled page."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from redis.exceptions import RedisError

from predictions import clients
from queueadmin import selectors, services

logger = logging.getLogger(__name__)

PERMISSION = "queueadmin.view_dashboard"
REFRESH_SECONDS = 3
DEFAULT_CLEAN_AGE = 3600

JOB_ACTIONS = {
    "retry": (
        "Retry",
        "Run this prediction again under the same id: its status goes back to "
        "queued, its error is cleared, its old job and event stream are deleted and a new "
        "job is enqueued.",
    ),
    "cancel": (
        "Cancel",
        "Stop this prediction as the API's cancel does: a waiting one never "
        "runs, a running one is stopped within a fraction of a second.",
    ),
    "remove": (
        "Remove",
        "Delete its rq job, registry entries and results from Redis. The "
        "prediction stays in the database; a waiting one is cancelled first so no client "
        "waits for it.",
    ),
}


def dashboard_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """404 while the dashboard is off; admin login, then the dashboard permission (else 403)."""

    @functools.wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(PERMISSION):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    guarded = admin.site.admin_view(checked)

    @functools.wraps(view)
    def switched(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.ENABLE_QUEUE_DASHBOARD:
            raise Http404("The queue dashboard is off (ENABLE_BULLMQ_DASHBOARD)")
        return guarded(request, *args, **kwargs)

    return switched


def _context(request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
    return {
        **admin.site.each_context(request),
        "title": title,
        "queue_mode": settings.MODE == "queue",
        "queue_name": settings.QUEUE_NAME,
        "redis_display": settings.REDIS.display,
        "refresh_seconds": REFRESH_SECONDS,
        "states": selectors.STATES,
        "remove_on_age": settings.REMOVE_ON_AGE,
        **extra,
    }


def _redis_error(request: HttpRequest, exc: RedisError) -> str:
    logger.warning("queue dashboard: Redis unreachable: %s", exc)
    return f"Redis at {settings.REDIS.display} is unreachable: {type(exc).__name__}: {exc}"


@dashboard_view
def dashboard(request: HttpRequest) -> HttpResponse:
    """Queues, workers, throughput and the running jobs; `?fragment=1` renders the live part."""
    error = ""
    overview: Any = None
    if settings.MODE == "queue":
        try:
            overview = selectors.queue_overview(clients.get_sync_redis())
        except RedisError as exc:
            error = _redis_error(request, exc)
    else:
        overview = selectors.local_overview()
    context = _context(request, "Queues", overview=overview, error=error)
    if request.GET.get("fragment"):
        return render(request, "queueadmin/_dashboard_live.html", context)
    return render(request, "queueadmin/dashboard.html", context)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


@dashboard_view
def job_list(request: HttpRequest, queue: str, state: str) -> HttpResponse:
    """One page of a queue's jobs in one state, newest first, with filters."""
    if state not in selectors.STATES:
        raise Http404(f"Unknown state {state!r}")
    if settings.MODE != "queue":
        messages.info(request, "Queue mode is off (MODE=main): there are no queues to list.")
        return HttpResponseRedirect(reverse("queueadmin:queueadmin_dashboard"))
    filters = selectors.JobFilter(
        chatflow=request.GET.get("chatflow", "").strip(),
        chat_id=request.GET.get("chat_id", "").strip(),
        prediction_id=request.GET.get("prediction", "").strip(),
    )
    error = ""
    page = None
    try:
        page = selectors.job_page(
            clients.get_sync_redis(),
            queue=queue,
            state=state,
            page=_int(request.GET.get("page"), 1),
            per_page=_int(request.GET.get("per_page"), selectors.PAGE_SIZE),
            filters=filters,
        )
    except RedisError as exc:
        error = _redis_error(request, exc)
    context = _context(
        request,
        f"{queue}: {state} jobs",
        queue=queue,
        state=state,
        page=page,
        filters=filters,
        error=error,
        flowsite_queue=selectors.is_flowsite_queue(queue),
    )
    if request.GET.get("fragment"):
        return render(request, "queueadmin/_job_table.html", context)
    return render(request, "queueadmin/job_list.html", context)


@dashboard_view
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """A job's request (secrets masked), answer, error, timeline, worker and event log."""
    connection = clients.get_sync_redis() if settings.MODE == "queue" else None
    try:
        detail = selectors.job_detail(connection, job_id)
    except RedisError as exc:
        messages.error(request, _redis_error(request, exc))
        detail = selectors.job_detail(None, job_id)
    if detail is None:
        raise Http404(f"No prediction or job {job_id}")
    return render(
        request, "queueadmin/job_detail.html", _context(request, f"Job {job_id}", detail=detail)
    )


@dashboard_view
def job_action(request: HttpRequest, job_id: str, action: str) -> HttpResponse:
    """Confirm (GET) and run (POST) retry, cancel or remove of one job."""
    if action not in JOB_ACTIONS:
        raise Http404(f"Unknown action {action!r}")
    label, explanation = JOB_ACTIONS[action]
    detail_url = reverse("queueadmin:queueadmin_job_detail", args=[job_id])
    if request.method == "POST":
        try:
            if action == "retry":
                services.job_retry(prediction_id=job_id, user=request.user)
                messages.success(request, f"Prediction {job_id} was re-enqueued.")
            elif action == "cancel":
                status = services.job_cancel(prediction_id=job_id, user=request.user)
                messages.success(request, f"Prediction {job_id}: {status}.")
            else:
                services.job_remove(job_id=job_id, user=request.user)
                messages.success(request, f"The rq job {job_id} was removed.")
        except services.ActionRefused as exc:
            messages.error(request, exc.message)
        except RedisError as exc:
            messages.error(request, _redis_error(request, exc))
        return HttpResponseRedirect(detail_url)
    context = _context(
        request,
        f"{label} job {job_id}?",
        action=action,
        label=label,
        explanation=explanation,
        job_id=job_id,
        cancel_url=detail_url,
    )
    return render(request, "queueadmin/confirm.html", context)


@dashboard_view
def queue_clean(request: HttpRequest, queue: str) -> HttpResponse:
    """Confirm (GET) and delete (POST) finished and failed jobs older than N seconds."""
    back = reverse("queueadmin:queueadmin_dashboard")
    older_than = _int(
        request.POST.get("older_than") or request.GET.get("older_than"), DEFAULT_CLEAN_AGE
    )
    if request.method == "POST":
        try:
            result = services.queue_clean(queue=queue, older_than=older_than, user=request.user)
            messages.success(
                request,
                f"Removed {result.finished} finished and {result.failed} failed jobs of {queue} "
                f"that ended more than {older_than} s ago.",
            )
        except services.ActionRefused as exc:
            messages.error(request, exc.message)
        except RedisError as exc:
            messages.error(request, _redis_error(request, exc))
        return HttpResponseRedirect(back)
    context = _context(
        request,
        f"Clean queue {queue}?",
        action="clean",
        label="Clean",
        explanation=(
            "Delete rq's records (job, result, registry entry) of finished and failed jobs "
            "that ended more than the given number of seconds ago. Predictions stay in the "
            "database."
        ),
        queue=queue,
        older_than=older_than,
        cancel_url=back,
    )
    return render(request, "queueadmin/confirm.html", context)


@dashboard_view
def queues_pause(request: HttpRequest, paused: bool) -> HttpResponse:
    """Confirm (GET) and apply (POST) pause or resume of every queue on this Redis."""
    back = reverse("queueadmin:queueadmin_dashboard")
    label = "Pause" if paused else "Resume"
    if request.method == "POST":
        try:
            if paused:
                services.queues_pause(user=request.user)
                messages.success(request, "All queues are paused: workers claim no new jobs.")
            else:
                services.queues_resume(user=request.user)
                messages.success(request, "All queues resumed.")
        except services.ActionRefused as exc:
            messages.error(request, exc.message)
        except RedisError as exc:
            messages.error(request, _redis_error(request, exc))
        return HttpResponseRedirect(back)
    explanation = (
        "Workers stop claiming jobs within about a second; running jobs finish. rq's suspension "
        "is global: this pauses every queue of every worker on this Redis, not one queue."
        if paused
        else "Workers start claiming jobs again within about a second."
    )
    context = _context(
        request,
        f"{label} all queues?",
        action="pause" if paused else "resume",
        label=label,
        explanation=explanation,
        cancel_url=back,
    )
    return render(request, "queueadmin/confirm.html", context)
