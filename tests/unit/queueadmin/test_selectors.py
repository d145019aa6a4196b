"""Job rows, pages and worker entries of the dashboard, without Redis."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from predictions.models import Chatflow, Prediction
from queueadmin.selectors import JobFilter, JobPage, JobRow, _worker_info


def _prediction(**fields) -> Prediction:
    return Prediction(chatflow=Chatflow(name="flow"), request={"question": "why?"}, **fields)


def test_job_row_wait_and_run_times_of_a_finished_prediction():
    t0 = timezone.now() - timedelta(minutes=5)
    row = JobRow.from_prediction(
        _prediction(
            enqueued_at=t0,
            started_at=t0 + timedelta(seconds=2),
            finished_at=t0 + timedelta(seconds=7),
            status="succeeded",
            worker_name="w1",
        )
    )
    assert row.wait_seconds == 2
    assert row.run_seconds == 5
    assert row.worker == "w1"
    assert row.question == "why?"
    assert row.chatflow_name == "flow"


def test_job_row_of_a_waiting_prediction_counts_wait_until_now():
    row = JobRow.from_prediction(_prediction(enqueued_at=timezone.now() - timedelta(seconds=30)))
    assert 29 < row.wait_seconds < 60
    assert row.run_seconds is None


def test_job_row_without_prediction_falls_back_to_the_rq_hash():
    row = JobRow(id="foreign")
    row.add_job_hash(
        [
            b"started",
            b"2026-01-01T00:00:00.000000Z",
            b"2026-01-01T00:00:03.000000Z",
            b"",
            b"w9",
            b"other.job()",
        ]
    )
    assert row.in_redis
    assert row.status == "started"
    assert row.worker == "w9"
    assert row.wait_seconds == 3
    assert row.question == "other.job()"


def test_job_page_counts_pages():
    page = JobPage("q", "waiting", [], total=51, page=2, per_page=25, source="redis")
    assert page.num_pages == 3
    assert page.has_previous
    assert page.has_next
    assert JobPage("q", "waiting", [], 0, 1, 25, "redis").num_pages == 1


def test_job_filter_is_false_without_values():
    assert not JobFilter()
    assert JobFilter(chat_id="c")


def test_worker_without_recent_heartbeat_is_stale(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 10
    old = (timezone.now() - timedelta(seconds=31)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fresh = timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _worker_info("a", {b"last_heartbeat": old.encode()}, 0, 30).stale
    info = _worker_info("b", {b"last_heartbeat": fresh, b"pid": b"12", b"state": b"busy"}, 3, 30)
    assert not info.stale
    assert info.pid == 12
    assert info.in_flight == 3
    gone = _worker_info("c", {}, 0, 30)
    assert gone.stale
    assert gone.gone
