"""GET /metrics on web: Prometheus text of this process plus the queues' state read from Redis.

Off unless METRICS_ENABLED; with METRICS_TOKEN it needs `Authorization: Bearer <token>`. The queue
part (depth and oldest-waiting age per queue, jobs per state, in-flight per worker, the fleet
counters of cancel/timeouts/lost jobs) is read at scrape time with `queue_overview`'s 3 Redis
round trips; prediction counters and histograms come from predictions.metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from predictions import clients, local
from predictions import metrics as prediction_metrics
from queueadmin import selectors

logger = logging.getLogger(__name__)


class QueueCollector(Collector):
    """Collect the queues' state from Redis (queue mode) or this process (main mode)."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flowsite_queue_up", "1 if the queue backend answered the scrape")
        if settings.MODE != "queue":
            up.add_metric([], 1)
            yield up
            in_flight = GaugeMetricFamily(
                "flowsite_main_in_flight", "Predictions running in this web process (main mode)"
            )
            in_flight.add_metric([], len(local.in_flight()))
            yield in_flight
            return
        try:
            overview = selectors.queue_overview(clients.get_sync_redis())
        except RedisError as exc:
            logger.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "flowsite_queue_depth", "Jobs waiting per queue", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            "flowsite_queue_jobs", "Jobs per queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "flowsite_queue_oldest_waiting_seconds",
            "Age of the oldest waiting job per queue (0 when none waits)",
            labels=["queue"],
        )
        for queue in overview.queues:
            depth.add_metric([queue.name], queue.counts[selectors.WAITING])
            for state, value in queue.counts.items():
                jobs.add_metric([queue.name, state], value)
            oldest.add_metric([queue.name], queue.oldest_waiting_seconds or 0.0)
        yield from (depth, jobs, oldest)
        workers = GaugeMetricFamily(
            "flowsite_rq_worker_in_flight",
            "Jobs each registered worker runs now (its rq executions)",
            labels=["worker", "hostname", "stale"],
        )
        for worker in overview.workers:
            workers.add_metric(
                [worker.name, worker.hostname, "true" if worker.stale else "false"],
                worker.in_flight,
            )
        yield workers
        paused = GaugeMetricFamily("flowsite_queues_paused", "1 while rq's suspension is set")
        paused.add_metric([], 1 if overview.paused else 0)
        yield paused
        for name, value in overview.counters.items():
            counter = CounterMetricFamily(
                f"flowsite_{name}", f"Fleet-wide {name.replace('_', ' ')} (from Redis)"
            )
            counter.add_metric([], value)
            yield counter


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve Prometheus text; 404 when METRICS_ENABLED is off, 401 without the bearer token."""
    if not settings.METRICS_ENABLED:
        raise Http404("Metrics are off (METRICS_ENABLED)")
    if not prediction_metrics.token_ok(
        request.headers.get("Authorization"), settings.METRICS_TOKEN
    ):
        response = HttpResponse("unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    queue_registry = CollectorRegistry()
    queue_registry.register(QueueCollector())
    body = prediction_metrics.render() + generate_latest(queue_registry)
    return HttpResponse(body, content_type=prediction_metrics.CONTENT_TYPE)
