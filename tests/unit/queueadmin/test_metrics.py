"""Prediction metrics and their gates (METRICS_ENABLED, METRICS_TOKEN), without Redis."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from predictions import metrics


@dataclass
class FakeSource:
    name: str = "w-test"
    in_flight_count: int = 2
    concurrency: int = 50


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_token_ok_without_a_token_accepts_everything():
    assert metrics.token_ok(None, "")
    assert metrics.token_ok("Bearer x", "")


def test_token_ok_needs_the_exact_bearer_token():
    assert metrics.token_ok("Bearer abc", "abc")
    assert metrics.token_ok("bearer abc", "abc")
    assert not metrics.token_ok("Bearer abd", "abc")
    assert not metrics.token_ok("Basic abc", "abc")
    assert not metrics.token_ok(None, "abc")


def test_worker_metrics_are_off_unless_enabled(settings):
    settings.METRICS_ENABLED = False
    assert metrics.worker_metrics(FakeSource(), [])[0] == 404


def test_worker_metrics_check_the_token_and_report_in_flight(settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = "t0k"
    assert metrics.worker_metrics(FakeSource(), [b"Host: x\r\n"])[0] == 401
    status, body = metrics.worker_metrics(FakeSource(), [b"Authorization: Bearer t0k\r\n"])
    assert status == 200
    assert b'flowsite_worker_in_flight{worker="w-test"} 2.0' in body
    assert b'flowsite_worker_concurrency{worker="w-test"} 50.0' in body


@dataclass
class FakePrediction:
    id: uuid.UUID
    chatflow_id: uuid.UUID
    enqueued_at: object
    started_at: object


def test_a_run_counts_start_wait_tokens_first_token_and_success():
    now = timezone.now()
    p = FakePrediction(uuid.uuid4(), uuid.uuid4(), now - timedelta(seconds=2), now)
    flow = str(p.chatflow_id)
    metrics.prediction_started(p)
    for name in ("start", "token", "token", "token"):
        metrics.prediction_event(str(p.id), name)
    metrics.prediction_succeeded(str(p.id))
    assert _sample("flowsite_predictions_started_total", chatflow=flow) == 1
    assert _sample("flowsite_predictions_finished_total", chatflow=flow) == 1
    assert _sample("flowsite_prediction_tokens_total", chatflow=flow) == 3
    assert _sample("flowsite_prediction_time_to_first_token_seconds_count", chatflow=flow) == 1
    assert _sample("flowsite_prediction_wait_seconds_sum", chatflow=flow) == pytest.approx(2, 0.01)
    assert (
        _sample("flowsite_prediction_duration_seconds_count", chatflow=flow, outcome="succeeded")
        == 1
    )


async def test_a_timeout_counts_as_failed_and_timed_out_and_in_the_local_counters(settings):
    settings.MODE = "main"
    now = timezone.now()
    p = FakePrediction(uuid.uuid4(), uuid.uuid4(), now, now)
    flow = str(p.chatflow_id)
    before = metrics.local_counters()["timeouts"]
    metrics.prediction_started(p)
    await metrics.aprediction_failed(str(p.id), "prediction_timeout")
    failed = _sample("flowsite_predictions_failed_total", chatflow=flow, code="prediction_timeout")
    assert failed == 1
    assert _sample("flowsite_predictions_timed_out_total", chatflow=flow) == 1
    assert metrics.local_counters()["timeouts"] == before + 1


async def test_a_cancel_of_a_run_this_process_does_not_know_is_labelled_unknown(settings):
    settings.MODE = "main"
    before = _sample("flowsite_predictions_cancelled_total", chatflow="unknown")
    await metrics.aprediction_cancelled(str(uuid.uuid4()))
    assert _sample("flowsite_predictions_cancelled_total", chatflow="unknown") == before + 1
