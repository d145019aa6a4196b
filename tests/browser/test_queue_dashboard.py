"""The queue dashboard (/admin/queues) in headless Chromium against daphne + rqworker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import offline_flow
from tests.e2e.conftest import ROOT, Stack
from tests.unit.engine.openai_stub import OpenAIStub, unused_base_url
from tests.unit.helpers import openai_flow

PASSWORD = "dashboard-pw-123"
RUNNING_ROWS = "#running-jobs tr[data-status='running']"


def _django(stack: Stack, code: str, data: dict[str, Any]) -> str:
    """Run Django code against the stack's database, with `data` on stdin as JSON."""
    prelude = "import django, json, sys; django.setup()\nd = json.loads(sys.stdin.read())\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=stack.env(),
        input=json.dumps(data),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def create_user(stack: Stack, username: str, *, staff: bool, superuser: bool = False) -> None:
    _django(
        stack,
        "from django.contrib.auth import get_user_model\n"
        "get_user_model().objects.create_user(d['u'], '', d['p'], is_staff=d['staff'],"
        " is_superuser=d['su'])\n",
        {"u": username, "p": PASSWORD, "staff": staff, "su": superuser},
    )


def point_chatflow_at(stack: Stack, chatflow_id: str, flow_data: str) -> None:
    _django(
        stack,
        "from predictions import services\nfrom predictions.models import Chatflow\n"
        "services.chatflow_update(chatflow=Chatflow.objects.get(id=d['id']), flow_data=d['f'])\n",
        {"id": chatflow_id, "f": flow_data},
    )


def log_in(page: Page, web: str, username: str) -> None:
    page.goto(f"{web}/admin/login/?next=/admin/queues/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.locator("input[type=submit]").click()


def predict_in_background(web: str, chatflow_id: str, question: str) -> threading.Thread:
    def post() -> None:
        httpx.post(
            f"{web}/api/v1/prediction/{chatflow_id}",
            json={"question": question, "chatId": "browser"},
            timeout=60,
        )

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_staff_watches_a_prediction_finish_opens_it_and_retries_a_failed_one(
    stack: Stack, page: Page, tmp_path: Path
):
    web = stack.start_web(ENABLE_BULLMQ_DASHBOARD="true")
    stack.start_worker()
    create_user(stack, "ops", staff=True, superuser=True)
    slow = stack.create_chatflow(offline_flow(tokens=40, delay_ms=200))

    log_in(page, web, "ops")
    expect(page).to_have_url(f"{web}/admin/queues/")
    expect(page.locator("#queues tr[data-queue='flowsite-queue']")).to_be_visible()
    expect(page.locator("#workers tr[data-worker]")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")

    # A running prediction appears (the page refreshes itself), then finishes.
    request = predict_in_background(web, slow, "watch me run")
    running = page.locator(RUNNING_ROWS)
    expect(running).to_have_count(1)
    prediction_id = running.get_attribute("data-job-id")
    expect(page.locator("#running-jobs")).to_contain_text("watch me run")
    page.screenshot(path=str(tmp_path / "dashboard-running.png"), full_page=True)
    finished = page.locator(f"#recent-jobs tr[data-job-id='{prediction_id}']")
    expect(finished).to_have_attribute("data-status", "succeeded")
    expect(page.locator(RUNNING_ROWS)).to_have_count(0)
    assert page.evaluate("window.__sameDocument") is True  # swapped in place, never reloaded
    request.join(30)

    # Its detail page: the request, the answer, the timeline and the event log.
    finished.locator("a").click()
    expect(page.locator("#prediction-status")).to_have_text("succeeded")
    expect(page.locator("#request-question")).to_have_text("watch me run")
    expect(page.locator("#answer")).to_contain_text("tok0 tok1")
    expect(page.locator("#rq-status")).to_have_text("finished")
    expect(page.locator("#events tr[data-event='end']")).to_have_count(1)

    # A prediction whose model server is down fails; once it is back, a retry succeeds.
    broken = stack.create_chatflow(openai_flow(unused_base_url()))
    assert httpx.post(
        f"{web}/api/v1/prediction/{broken}", json={"question": "retry me"}, timeout=60
    ).is_error
    page.goto(f"{web}/admin/queues/")
    failed = page.locator("#recent-jobs tr[data-status='failed']")
    expect(failed).to_have_count(1)
    failed_id = failed.get_attribute("data-job-id")
    failed.locator("a").click()
    expect(page.locator("#error-code")).to_have_text("provider_unreachable")
    with OpenAIStub() as model_server:
        point_chatflow_at(stack, broken, openai_flow(model_server.base_url))
        page.locator("#action-retry").click()
        expect(page.locator("#confirm-form")).to_be_visible()
        page.locator("#confirm-retry").click()
        expect(page.locator(".messagelist")).to_contain_text("re-enqueued")
        page.goto(f"{web}/admin/queues/")
        retried = page.locator(f"#recent-jobs tr[data-job-id='{failed_id}']")
        expect(retried).to_have_attribute("data-status", "succeeded")
    page.screenshot(path=str(tmp_path / "dashboard-retried.png"), full_page=True)
    retried.locator("a").click()
    expect(page.locator("#prediction-attempts")).to_have_text("2")
    expect(page.locator("#answer")).to_contain_text("Hello from the stub.")


def test_users_without_staff_or_permission_are_refused(stack: Stack, page: Page):
    web = stack.start_web(ENABLE_BULLMQ_DASHBOARD="true")
    create_user(stack, "visitor", staff=False)
    create_user(stack, "clerk", staff=True)

    log_in(page, web, "visitor")
    expect(page.locator(".errornote")).to_contain_text("staff account")
    response = page.goto(f"{web}/admin/queues/")
    assert response is not None
    expect(page).to_have_url(f"{web}/admin/login/?next=/admin/queues/")
    expect(page.locator("#queues")).to_have_count(0)

    log_in(page, web, "clerk")
    response = page.goto(f"{web}/admin/queues/")
    assert response is not None
    assert response.status == 403
    expect(page.locator("#queues")).to_have_count(0)


def test_dashboard_is_404_while_the_flag_is_off(stack: Stack, page: Page):
    web = stack.start_web(ENABLE_BULLMQ_DASHBOARD="false")
    create_user(stack, "ops", staff=True, superuser=True)
    log_in(page, web, "ops")
    expect(page).to_have_url(f"{web}/admin/queues/")  # the login's redirect target
    response = page.goto(f"{web}/admin/queues/")
    assert response is not None
    assert response.status == 404
    page.goto(f"{web}/admin/")
    expect(page.locator("#content-main")).not_to_contain_text("Queue dashboard")
