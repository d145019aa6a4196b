"""The dashboard's Redis cost does not grow with the queue: measured with 10,000 waiting jobs."""

from __future__ import annotations

import pytest
from rq.queue import Queue

from predictions.models import Prediction

pytestmark = pytest.mark.django_db(transaction=True)

WAITING_JOBS = 10_000
# queue_overview: names + pause flag + running ids + counters | counts, heads, workers, running
# jobs | oldest job's enqueue time. Measured: 3 for 10 jobs and for 10,000.
DASHBOARD_ROUND_TRIPS = 3
# job_page: LLEN/ZCARD + the page's ids | the page's job hashes.
LIST_ROUND_TRIPS = 2
# job_detail: the job hash | its latest result | the event stream (XLEN + XRANGE).
DETAIL_ROUND_TRIPS = 3
LIST_URL = "/admin/queues/queue/flowsite-queue/waiting/"


def _fill_queue(queue: Queue, chatflow, count: int) -> list[Prediction]:
    predictions = Prediction.objects.bulk_create(
        [
            Prediction(
                chatflow=chatflow,
                chat_id=f"chat-{i % 50}",
                session_id=f"chat-{i % 50}",
                request={"question": f"question {i}"},
            )
            for i in range(count)
        ]
    )
    for start in range(0, count, 2000):
        queue.enqueue_many(
            [
                Queue.prepare_data(
                    "predictions.jobs.prediction_run_job", args=(str(p.id),), job_id=str(p.id)
                )
                for p in predictions[start : start + 2000]
            ]
        )
    return predictions


def _register_worker(connection, name: str) -> None:
    connection.sadd("rq:workers", f"rq:worker:{name}")
    connection.hset(f"rq:worker:{name}", mapping={"state": "idle", "pid": "1"})


@pytest.mark.parametrize("waiting", [10, WAITING_JOBS])
def test_dashboard_redis_round_trips_do_not_grow_with_the_queue(
    waiting,
    queue_mode,
    rq_queue,
    admin_user_client,
    make_chatflow,
    round_trips,
    django_assert_max_num_queries,
):
    predictions = _fill_queue(rq_queue, make_chatflow(), waiting)
    _register_worker(queue_mode, "w1")
    _register_worker(queue_mode, "w2")
    assert rq_queue.count == waiting

    round_trips.reset()
    with django_assert_max_num_queries(8):  # session, user, aggregate, running, recent rows
        response = admin_user_client.get("/admin/queues/")
    assert response.status_code == 200
    assert response.context["overview"].queues[0].counts["waiting"] == waiting
    assert round_trips.count == DASHBOARD_ROUND_TRIPS, round_trips.commands

    round_trips.reset()
    admin_user_client.get("/admin/queues/?fragment=1")
    assert round_trips.count == DASHBOARD_ROUND_TRIPS, round_trips.commands

    for page in (1, max(1, waiting // 25)):
        round_trips.reset()
        with django_assert_max_num_queries(4):  # session, user, the page's predictions
            listed = admin_user_client.get(f"{LIST_URL}?page={page}")
        rows = listed.context["page"].rows
        assert len(rows) == min(25, waiting)
        assert all(row.prediction is not None for row in rows)
        assert round_trips.count == LIST_ROUND_TRIPS, round_trips.commands

    round_trips.reset()
    admin_user_client.get(f"/admin/queues/jobs/{predictions[-1].id}/")
    assert round_trips.count == DETAIL_ROUND_TRIPS, round_trips.commands

    round_trips.reset()
    assert admin_user_client.get("/api/v1/monitor/job_queue").status_code == 200
    assert round_trips.count == DASHBOARD_ROUND_TRIPS, round_trips.commands
