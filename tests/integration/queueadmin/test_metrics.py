"""Prometheus text at /metrics (web) and on the worker's health port."""

from __future__ import annotations

import http.client

import pytest
from django.test import Client

from predictions.worker import ConcurrentWorker
from tests.conftest import offline_flow
from tests.integration.queueadmin.conftest import predict, wait_for_status
from tests.integration.worker.helpers import free_port, running, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_metrics_off_is_404(settings):
    settings.METRICS_ENABLED = False
    assert Client().get("/metrics").status_code == 404


def test_metrics_bearer_token_is_required_when_set(settings, queue_mode):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics").status_code == 401
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = Client().get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert right.status_code == 200
    assert right["Content-Type"].startswith("text/plain")


def test_metrics_show_queue_depth_age_and_prediction_counters(
    settings, queue_mode, worker, make_chatflow
):
    settings.METRICS_ENABLED = True
    chatflow = make_chatflow(flow_data=offline_flow(tokens=3))
    done = predict(chatflow, "counted", streaming=True)
    wait_for_status(done.id, "succeeded")
    worker.request_shutdown()
    wait_until(lambda: worker.loop is None, 20, "the worker to stop")
    predict(chatflow, "waits")
    text = Client().get("/metrics").content.decode()
    assert 'flowsite_queue_depth{queue="flowsite-queue"} 1.0' in text
    assert 'flowsite_queue_oldest_waiting_seconds{queue="flowsite-queue"}' in text
    assert f'flowsite_predictions_started_total{{chatflow="{chatflow.id}"}}' in text
    assert f'flowsite_predictions_finished_total{{chatflow="{chatflow.id}"}}' in text
    assert f'flowsite_prediction_tokens_total{{chatflow="{chatflow.id}"}} 3.0' in text
    assert "flowsite_prediction_time_to_first_token_seconds_bucket" in text
    assert "flowsite_prediction_wait_seconds_bucket" in text
    assert "flowsite_cancel_published_total 0.0" in text


def _get(port: int, path: str, **headers: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def test_worker_serves_metrics_on_its_health_port(settings, queue_mode, rq_queue):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = "tok"
    port = free_port()
    w = ConcurrentWorker(
        [rq_queue],
        connection=rq_queue.connection,
        concurrency=7,
        health_port=port,
        health_host="127.0.0.1",
        check_database=False,
    )
    with running(w) as runner:
        wait_until(lambda: w.health_server and w.health_server.bound_port, 10, "health server")
        assert _get(port, "/metrics")[0] == 401
        status, content_type, text = _get(port, "/metrics", Authorization="Bearer tok")
        assert status == 200
        assert content_type.startswith("text/plain")
        assert f'flowsite_worker_concurrency{{worker="{w.name}"}} 7.0' in text
        assert f'flowsite_worker_in_flight{{worker="{w.name}"}} 0.0' in text
        assert _get(port, "/healthz")[0] == 200
        settings.METRICS_ENABLED = False
        assert _get(port, "/metrics")[0] == 404
        w.request_shutdown()
        runner.join(20)
