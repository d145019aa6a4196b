"""flowsite.middleware: Django's middleware under ASGI, same behaviour, no thread hand-offs."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


def _no_threads(*args, **kwargs):
    raise AssertionError("a middleware hook went to a thread")


async def test_middleware_hooks_run_on_the_event_loop(monkeypatch):
    monkeypatch.setattr("flowsite.middleware.sync_to_async", _no_threads)

    response = await AsyncClient().get("/api/v1/ping")

    assert response.status_code == 200
    # What SecurityMiddleware and XFrameOptionsMiddleware add, added inline.
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"


async def test_admin_login_saves_the_session_and_checks_csrf():
    user_model = get_user_model()
    await user_model.objects.acreate_superuser("boss", "boss@example.com", "pw-123456")
    client = AsyncClient(enforce_csrf_checks=True)

    refused = await client.post("/admin/login/", {"username": "boss", "password": "pw-123456"})
    assert refused.status_code == 403  # no CSRF token: CsrfViewMiddleware's async process_view

    page = await client.get("/admin/login/")
    token = page.cookies["csrftoken"].value
    logged_in = await client.post(
        "/admin/login/",
        {"username": "boss", "password": "pw-123456", "csrfmiddlewaretoken": token},
    )
    assert logged_in.status_code == 302
    # The session was saved (in a thread, as it writes) and authenticates the next request.
    assert (await client.get("/admin/")).status_code == 200


def test_deploy_checks_find_the_subclassed_middleware(settings):
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert not ids & {"flowsite.W004", "flowsite.W005", "flowsite.W006"}

    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("CsrfViewMiddleware")]
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert "flowsite.W006" in ids


async def test_admin_messages_survive_the_lazy_message_storage():
    user_model = get_user_model()
    await user_model.objects.acreate_superuser("boss", "boss@example.com", "pw-123456")
    client = AsyncClient()
    await client.alogin(username="boss", password="pw-123456")

    # An admin action with nothing selected stores a warning, shown after the redirect.
    response = await client.post(
        "/admin/predictions/chatflow/",
        {"action": "delete_selected", "index": "0"},
        follow=True,
    )

    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == [
        "Items must be selected in order to perform actions on them. No items have been changed."
    ]
