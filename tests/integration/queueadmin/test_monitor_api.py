"""GET /api/v1/monitor/job_queue: superusers only, in the API's error shape otherwise."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import offline_flow
from tests.integration.queueadmin.conftest import predict, wait_for_job, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/monitor/job_queue"


def test_monitor_refuses_staff_and_anonymous_with_the_api_error_shape(queue_mode, viewer_client):
    for client in (viewer_client, Client()):
        response = client.get(URL)
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "forbidden"
        assert body["statusCode"] == 403
        assert body["success"] is False


def test_monitor_reports_queues_workers_and_counters(
    queue_mode, worker, admin_user_client, make_chatflow
):
    chatflow = make_chatflow(flow_data=offline_flow(tokens=2))
    done = predict(chatflow, "one")
    wait_for_status(done.id, "succeeded")
    wait_for_job(queue_mode, done.id, "finished")
    body = admin_user_client.get(URL).json()
    assert body["backend"] == "rq"
    assert body["queueName"] == "flowsite-queue"
    [queue] = [q for q in body["queues"] if q["name"] == "flowsite-queue"]
    assert queue["counts"]["finished"] == 1
    assert set(queue["counts"]) == {
        "waiting",
        "running",
        "scheduled",
        "deferred",
        "finished",
        "failed",
        "cancelled",
    }
    assert [w["name"] for w in body["workers"]] == [worker.name]
    assert body["workers"][0]["successfulJobs"] >= 1
    assert body["cancel"] == {"published": 0, "markerHits": 0, "dispatched": 0}
    assert body["timeouts"] == 0
    assert body["lostJobs"] == 0
    assert body["paused"] is False
    assert body["activeJobs"] == {"running": 0, "waiting": 0, "jobs": []}


def test_monitor_counts_timeouts_and_marker_hits(
    queue_mode, worker, admin_user_client, make_chatflow, settings, rq_queue
):
    from predictions.streaming import cancel_key

    settings.PREDICTION_TIMEOUT = 1
    slow = predict(make_chatflow(flow_data=offline_flow(tokens=100, delay_ms=50)), "slow")
    assert wait_for_status(slow.id, "failed").error_code == "prediction_timeout"
    # A marker set before a worker claims the job: it is cancelled without running.
    worker.request_shutdown()
    marked = predict(make_chatflow(flow_data=offline_flow(tokens=1)), "marked")
    queue_mode.set(cancel_key(marked.id), "1")
    from predictions.worker import ConcurrentWorker

    ConcurrentWorker([rq_queue], connection=rq_queue.connection, health_port=0).work(burst=True)
    assert wait_for_status(marked.id, "cancelled").error_code == "cancelled"
    body = admin_user_client.get(URL).json()
    assert body["timeouts"] == 1
    assert body["cancel"]["markerHits"] == 1


def test_monitor_in_main_mode_reports_the_in_process_backend(settings, admin_user_client):
    settings.MODE = "main"
    body = admin_user_client.get(URL).json()
    assert body["backend"] == "in-process"
    assert body["activeJobs"] == {"count": 0, "ids": []}
