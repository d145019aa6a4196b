"""The queue dashboard's pages against real Redis and PostgreSQL, as a staff user."""

from __future__ import annotations

import time

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.suspension import is_suspended

from predictions.models import Prediction
from predictions.streaming import cancel_key, stream_key
from tests.conftest import offline_flow
from tests.integration.queueadmin.conftest import predict, wait_for, wait_for_job, wait_for_status
from tests.unit.engine.openai_stub import unused_base_url
from tests.unit.helpers import openai_flow

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD = "/admin/queues/"


# --- access ------------------------------------------------------------------------------------


def test_dashboard_off_answers_404_even_to_superusers(settings, admin_user_client):
    settings.ENABLE_QUEUE_DASHBOARD = False
    assert admin_user_client.get(DASHBOARD).status_code == 404
    assert Client().get(DASHBOARD).status_code == 404


def test_dashboard_anonymous_is_sent_to_the_admin_login(queue_mode):
    response = Client().get(DASHBOARD)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/admin/queues/")


def test_dashboard_staff_without_permission_gets_403(queue_mode, staff_client):
    assert staff_client.get(DASHBOARD).status_code == 403


def test_dashboard_non_staff_user_is_sent_to_the_admin_login(queue_mode, django_user_model):
    user = django_user_model.objects.create_user("plain", "p@example.com", "pw")
    client = Client()
    client.force_login(user)
    response = client.get(DASHBOARD)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_dashboard_staff_with_the_view_permission_gets_in(queue_mode, viewer_client):
    response = viewer_client.get(DASHBOARD)
    assert response.status_code == 200
    assert b'id="queues"' in response.content


def test_admin_index_links_the_dashboard_only_while_enabled(settings, queue_mode, viewer_client):
    assert b"/admin/queueadmin/dashboard/" in viewer_client.get("/admin/").content
    response = viewer_client.get("/admin/queueadmin/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    settings.ENABLE_QUEUE_DASHBOARD = False
    assert b"/admin/queueadmin/dashboard/" not in viewer_client.get("/admin/").content


def test_actions_need_the_permission_and_csrf(queue_mode, staff_client, viewer_client):
    assert staff_client.post(f"{DASHBOARD}pause/").status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = viewer_client.cookies
    assert strict.post(f"{DASHBOARD}pause/").status_code == 403
    assert not is_suspended(queue_mode)


# --- main mode ---------------------------------------------------------------------------------


def test_dashboard_main_mode_says_queue_mode_is_off_and_lists_active_rows(
    settings, admin_user_client, make_chatflow
):
    settings.MODE = "main"
    prediction = predict(make_chatflow(), "still queued")
    response = admin_user_client.get(DASHBOARD)
    assert response.status_code == 200
    assert b"Queue mode is off (MODE=main)" in response.content
    assert str(prediction.id).encode() in response.content


# --- overview ----------------------------------------------------------------------------------


def test_dashboard_counts_jobs_by_state_and_shows_the_worker(
    queue_mode, worker, admin_user_client, make_chatflow
):
    chatflow = make_chatflow(flow_data=offline_flow(tokens=2))
    done = predict(chatflow, "first")
    wait_for_status(done.id, "succeeded")
    failing = make_chatflow(flow_data=openai_flow(unused_base_url()))
    failed = predict(failing, "second")
    wait_for_status(failed.id, "failed")
    wait_for_job(queue_mode, done.id, "finished")
    wait_for_job(queue_mode, failed.id, "finished")

    response = admin_user_client.get(DASHBOARD)
    overview = response.context["overview"]
    main = overview.queues[0]
    assert main.name == "flowsite-queue"
    assert main.counts["finished"] == 1
    assert main.counts["failed"] == 1
    assert main.counts["waiting"] == 0
    assert overview.throughput.minute_done == 2
    assert overview.throughput.minute_failure_rate == 0.5
    [shown] = [w for w in overview.workers if w.name == worker.name]
    assert not shown.stale
    assert shown.successful >= 2
    assert shown.pid is not None
    assert worker.name.encode() in response.content
    assert [row.id for row in overview.recent][:2] == [str(failed.id), str(done.id)]


def test_dashboard_shows_a_running_prediction_with_its_worker(
    queue_mode, worker, admin_user_client, make_chatflow
):
    chatflow = make_chatflow(flow_data=offline_flow(tokens=200, delay_ms=20))
    prediction = predict(chatflow, "slow one")
    wait_for_status(prediction.id, "running")
    response = admin_user_client.get(f"{DASHBOARD}?fragment=1")
    assert b"<html" not in response.content  # the live fragment only
    overview = response.context["overview"]
    [row] = overview.running
    assert row.id == str(prediction.id)
    assert row.worker == worker.name
    assert row.question == "slow one"
    assert overview.queues[0].counts["running"] == 1
    [shown] = [w for w in overview.workers if w.name == worker.name]
    assert shown.in_flight == 1


def test_dashboard_marks_a_worker_without_heartbeat_stale(queue_mode, admin_user_client):
    queue_mode.sadd("rq:workers", "rq:worker:ghost")
    queue_mode.hset(
        "rq:worker:ghost",
        mapping={"last_heartbeat": "2020-01-01T00:00:00.000000Z", "state": "busy", "pid": "7"},
    )
    overview = admin_user_client.get(DASHBOARD).context["overview"]
    [ghost] = overview.workers
    assert ghost.stale
    assert b"stale" in admin_user_client.get(DASHBOARD).content


# --- job lists ---------------------------------------------------------------------------------


def test_waiting_list_is_newest_first_paginated_and_joined_with_predictions(
    queue_mode, admin_user_client, make_chatflow
):
    chatflow = make_chatflow()
    created = [predict(chatflow, f"question {i}", chat_id=f"chat-{i % 2}") for i in range(30)]
    url = f"{DASHBOARD}queue/flowsite-queue/waiting/"

    first = admin_user_client.get(url).context["page"]
    assert first.total == 30
    assert first.source == "redis"
    assert [row.id for row in first.rows] == [str(p.id) for p in reversed(created)][:25]
    assert first.rows[0].question == "question 29"
    assert first.rows[0].chatflow_name == chatflow.name
    second = admin_user_client.get(url + "?page=2").context["page"]
    assert [row.id for row in second.rows] == [str(p.id) for p in reversed(created[:5])]

    by_chat = admin_user_client.get(url + "?chat_id=chat-1").context["page"]
    assert by_chat.total == 15
    assert {row.prediction.chat_id for row in by_chat.rows} == {"chat-1"}
    by_id = admin_user_client.get(url + f"?prediction={created[3].id}").context["page"]
    assert [row.id for row in by_id.rows] == [str(created[3].id)]
    assert by_id.rows[0].rq_status == "queued"
    by_flow = admin_user_client.get(url + "?chatflow=nomatch").context["page"]
    assert by_flow.total == 0


def test_failed_list_shows_failed_predictions_with_error_codes(
    queue_mode, worker, admin_user_client, make_chatflow
):
    failed = predict(make_chatflow(flow_data=openai_flow(unused_base_url())), "will fail")
    wait_for_status(failed.id, "failed")
    response = admin_user_client.get(f"{DASHBOARD}queue/flowsite-queue/failed/")
    [row] = response.context["page"].rows
    assert row.id == str(failed.id)
    assert row.error_code == "provider_unreachable"
    assert row.run_seconds is not None


# --- job detail --------------------------------------------------------------------------------


def test_job_detail_masks_secrets_and_shows_answer_timeline_and_events(
    queue_mode, worker, admin_user_client, make_chatflow
):
    chatflow = make_chatflow(flow_data=offline_flow(tokens=3))
    prediction = predict(
        chatflow,
        "what is up",
        override_config={"openAIApiKey": "sk-very-secret", "temperature": 0.2},
        streaming=True,
    )
    wait_for_job(queue_mode, prediction.id, "finished")
    response = admin_user_client.get(f"{DASHBOARD}jobs/{prediction.id}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "sk-very-secret" not in body
    assert "********" in body
    detail = response.context["detail"]
    assert detail.answer == "tok0 tok1 tok2 "
    assert detail.job["status"] == "finished"
    assert [e["event"] for e in detail.events] == [
        "start",
        "token",
        "token",
        "token",
        "metadata",
        "end",
    ]
    assert detail.prediction.attempts == 1
    assert 'id="action-retry"' not in body


def test_job_detail_of_a_failed_job_shows_error_and_rq_traceback(
    queue_mode, admin_user_client, make_chatflow, rq_queue
):
    prediction = predict(make_chatflow(), "doomed")
    job = Job.fetch(str(prediction.id), connection=rq_queue.connection)
    # An rq-level failure (the job function raised): its registry entry and failure Result.
    rq_queue.remove(job)
    FailedJobRegistry(queue=rq_queue).add(job, ttl=600, exc_string="Traceback: boom\n")
    Result.create_failure(job, ttl=600, exc_string="Traceback: boom\n")
    Prediction.objects.filter(id=prediction.id).update(
        status="failed", error_code="internal_error", error_message="Internal error"
    )
    response = admin_user_client.get(f"{DASHBOARD}jobs/{prediction.id}/")
    detail = response.context["detail"]
    assert detail.traceback == "Traceback: boom\n"
    assert b"internal_error" in response.content
    assert b'id="action-retry"' in response.content


def test_job_detail_unknown_id_is_404(queue_mode, admin_user_client):
    assert admin_user_client.get(f"{DASHBOARD}jobs/nope/").status_code == 404


# --- actions -----------------------------------------------------------------------------------


def test_retry_confirms_then_reruns_the_same_id_with_a_fresh_stream(
    queue_mode, worker, admin_user_client, make_chatflow
):
    from predictions import services

    chatflow = make_chatflow(flow_data=openai_flow(unused_base_url()))
    prediction = predict(chatflow, "try again", streaming=True)
    wait_for_status(prediction.id, "failed")
    wait_for_job(queue_mode, prediction.id, "finished")
    assert queue_mode.exists(stream_key(prediction.id))

    url = f"{DASHBOARD}jobs/{prediction.id}/retry/"
    confirm = admin_user_client.get(url)
    assert confirm.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in confirm.content
    assert Prediction.objects.get(id=prediction.id).status == "failed"  # GET changes nothing

    services.chatflow_update(chatflow=chatflow, flow_data=offline_flow(tokens=2))
    response = admin_user_client.post(url)
    assert response.status_code == 302
    done = wait_for_status(prediction.id, "succeeded")
    assert done.error_code == ""
    assert done.attempts == 2
    entries = queue_mode.xrange(stream_key(prediction.id))
    names = [fields[b"e"] for _, fields in entries]
    assert entries[0][0] == b"0-1"  # a fresh stream, numbered from 1 again
    assert b"start" in names
    assert b"error" not in names
    assert names[-1] == b"end"
    entry = LogEntry.objects.get(object_id=str(prediction.id))
    assert entry.user.username == "root"
    assert "Retried" in entry.change_message


def test_retry_refuses_a_prediction_that_did_not_fail(queue_mode, admin_user_client, make_chatflow):
    prediction = predict(make_chatflow(), "queued")
    response = admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/retry/", follow=True)
    assert b"Only failed or cancelled predictions can be retried" in response.content
    assert not LogEntry.objects.exists()


def test_retry_waits_until_the_worker_recorded_the_last_run(
    queue_mode, admin_user_client, make_chatflow, rq_queue
):
    prediction = predict(make_chatflow(), "racing")
    Job.fetch(str(prediction.id), connection=rq_queue.connection).set_status("started")
    Prediction.objects.filter(id=prediction.id).update(status="failed")
    response = admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/retry/", follow=True)
    assert b"still recording the last run" in response.content
    assert Prediction.objects.get(id=prediction.id).status == "failed"


def test_cancel_a_waiting_prediction_is_audited(queue_mode, admin_user_client, make_chatflow):
    prediction = predict(make_chatflow(), "never run")
    admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/cancel/")
    assert Prediction.objects.get(id=prediction.id).status == "cancelled"
    assert queue_mode.exists(cancel_key(prediction.id))
    assert LogEntry.objects.get(object_id=str(prediction.id)).change_message.startswith("Cancelled")
    assert int(queue_mode.get("flowsite:metrics:cancel_published")) == 1


def test_cancel_a_running_prediction_stops_it_and_counts_the_dispatch(
    queue_mode, worker, admin_user_client, make_chatflow
):
    prediction = predict(
        make_chatflow(flow_data=offline_flow(tokens=500, delay_ms=20)), "long", streaming=True
    )
    # Past the worker's marker check: tokens flow (a cancel before that is a marker hit).
    wait_for(lambda: queue_mode.xlen(stream_key(prediction.id)) >= 3, "tokens to stream")
    admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/cancel/")
    stopped = wait_for_status(prediction.id, "cancelled")
    assert stopped.error_code == "cancelled"
    assert int(queue_mode.get("flowsite:metrics:cancel_dispatched")) == 1
    monitor = admin_user_client.get("/api/v1/monitor/job_queue").json()
    assert monitor["cancel"] == {"published": 1, "markerHits": 0, "dispatched": 1}


def test_cancelled_then_retried_prediction_runs_although_its_marker_was_set(
    queue_mode, worker, admin_user_client, make_chatflow
):
    prediction = predict(make_chatflow(flow_data=offline_flow(tokens=400, delay_ms=20)), "x")
    wait_for_status(prediction.id, "running")
    admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/cancel/")
    wait_for_status(prediction.id, "cancelled")
    wait_for_job(queue_mode, prediction.id, "stopped")
    from predictions import services

    services.chatflow_update(chatflow=prediction.chatflow, flow_data=offline_flow(tokens=1))
    admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/retry/")
    assert wait_for_status(prediction.id, "succeeded").attempts == 2


def test_remove_deletes_the_job_keeps_the_row_and_cancels_a_waiting_prediction(
    queue_mode, admin_user_client, make_chatflow, rq_queue
):
    prediction = predict(make_chatflow(), "remove me")
    assert rq_queue.count == 1
    admin_user_client.post(f"{DASHBOARD}jobs/{prediction.id}/remove/")
    assert rq_queue.count == 0
    assert not queue_mode.exists(Job.key_for(str(prediction.id)))
    assert Prediction.objects.get(id=prediction.id).status == "cancelled"
    entry = LogEntry.objects.get(object_id=str(prediction.id))
    assert "Removed" in entry.change_message


def test_clean_removes_finished_jobs_older_than_n_seconds(
    queue_mode, worker, admin_user_client, make_chatflow, rq_queue
):
    prediction = predict(make_chatflow(flow_data=offline_flow(tokens=1)), "old")
    wait_for_status(prediction.id, "succeeded")
    registry = FinishedJobRegistry(queue=rq_queue)
    wait_for(lambda: registry.get_job_count() == 1, "the finished registry")
    url = f"{DASHBOARD}queue/flowsite-queue/clean/"
    assert admin_user_client.get(url).status_code == 200
    admin_user_client.post(url, {"older_than": "3600"})
    assert registry.get_job_count() == 1  # ended moments ago: kept
    admin_user_client.post(url, {"older_than": "0"})
    assert registry.get_job_count() == 0
    assert not queue_mode.exists(Job.key_for(str(prediction.id)))
    assert Prediction.objects.get(id=prediction.id).status == "succeeded"
    messages = list(LogEntry.objects.values_list("change_message", flat=True))
    assert any("Cleaned 1 finished" in m for m in messages)


def test_pause_stops_claiming_and_resume_lets_jobs_run(
    queue_mode, worker, admin_user_client, make_chatflow
):
    admin_user_client.post(f"{DASHBOARD}pause/")
    assert is_suspended(queue_mode)
    page = admin_user_client.get(DASHBOARD)
    assert b'id="paused-banner"' in page.content
    wait_for(lambda: worker.get_state() == "suspended", "the worker to see the suspension")
    prediction = predict(make_chatflow(flow_data=offline_flow(tokens=1)), "paused")
    enqueued = time.monotonic()
    # The worker looks at the suspension again (and finds it) while the job waits.
    wait_for(lambda: worker._suspension_checked_at > enqueued, "a suspension check")
    assert Prediction.objects.get(id=prediction.id).status == "queued"
    admin_user_client.post(f"{DASHBOARD}resume/")
    assert not is_suspended(queue_mode)
    wait_for_status(prediction.id, "succeeded")
    assert LogEntry.objects.filter(change_message__startswith="Paused").count() == 1
    assert LogEntry.objects.filter(change_message__startswith="Resumed").count() == 1
