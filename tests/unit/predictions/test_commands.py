"""Management commands: setup_demo and create_api_key."""

from __future__ import annotations

import io
import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import AsyncClient

from predictions.demo import DEMO_CHATFLOW_ID
from predictions.models import ApiKey, Chatflow
from tests.unit.helpers import acreate_chatflow, post_json, prediction_url

PASSWORD_LINE = re.compile(r"Admin user 'admin' created with password '([^']+)'")


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- setup_demo ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_setup_demo_creates_the_demo_chatflow_and_admin(settings):
    settings.ADMIN_PASSWORD = "admin-pass-123"

    output = run("setup_demo")

    chatflow = Chatflow.objects.get()
    assert chatflow.id == DEMO_CHATFLOW_ID
    assert chatflow.is_streaming is True
    admin = get_user_model().objects.get()
    assert admin.username == "admin"
    assert admin.is_superuser
    assert admin.check_password("admin-pass-123")
    assert "created demo chatflow" in output


@pytest.mark.django_db
def test_setup_demo_twice_has_nothing_to_do(settings):
    settings.ADMIN_PASSWORD = "admin-pass-123"
    run("setup_demo")

    output = run("setup_demo")

    assert Chatflow.objects.count() == 1
    assert get_user_model().objects.count() == 1
    assert "setup_demo: nothing to do" in output


@pytest.mark.django_db
def test_setup_demo_without_admin_password_prints_a_generated_one_once(settings):
    settings.ADMIN_PASSWORD = ""

    first = run("setup_demo")
    second = run("setup_demo")

    [password] = PASSWORD_LINE.findall(first)
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert not PASSWORD_LINE.search(second)
    assert password not in second


@pytest.mark.django_db
def test_setup_demo_with_admin_password_prints_no_password(settings):
    settings.ADMIN_PASSWORD = "admin-pass-123"

    output = run("setup_demo")

    assert "admin-pass-123" not in output
    assert not PASSWORD_LINE.search(output)


@pytest.mark.django_db
def test_setup_demo_no_admin_skips_the_user(settings):
    output = run("setup_demo", "--no-admin")

    assert Chatflow.objects.filter(id=DEMO_CHATFLOW_ID).exists()
    assert not get_user_model().objects.exists()
    assert "admin" not in output


@pytest.mark.django_db(transaction=True)
async def test_setup_demo_chatflow_answers_a_prediction(api: AsyncClient, settings):
    settings.ADMIN_PASSWORD = "admin-pass-123"
    await sync_to_async(run)("setup_demo")

    first = await post_json(
        api, prediction_url(DEMO_CHATFLOW_ID), {"question": "hi", "chatId": "c"}
    )
    second = await post_json(
        api, prediction_url(DEMO_CHATFLOW_ID), {"question": "again", "chatId": "c"}
    )

    assert first.status_code == 200
    assert first.json()["text"].startswith("Offline model here")
    assert first.json()["memoryType"] == "Buffer Memory"
    assert "I remember 2 earlier messages" in second.json()["text"]


# --- create_api_key -----------------------------------------------------------------------------


def _raw_key(output: str) -> str:
    return output.splitlines()[0].strip()


@pytest.mark.django_db
def test_create_api_key_prints_the_key_once_and_stores_only_its_hash():
    output = run("create_api_key", "ci")

    raw = _raw_key(output)
    key = ApiKey.objects.get()
    assert raw.startswith("fs_")
    assert key.name == "ci"
    assert key.matches(raw)
    assert raw not in (key.key_hash, key.prefix)
    assert key.can_manage is False


@pytest.mark.django_db
def test_create_api_key_manage_flag_allows_the_management_api(client):
    raw = _raw_key(run("create_api_key", "admin", "--manage"))

    response = client.get("/api/v1/chatflows", headers={"Authorization": f"Bearer {raw}"})

    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_create_api_key_bound_to_a_chatflow_guards_its_predictions(api: AsyncClient):
    chatflow = await acreate_chatflow()

    raw = _raw_key(
        await sync_to_async(run)("create_api_key", "widget", "--chatflow", str(chatflow.id))
    )
    without = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})
    with_key = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Authorization=f"Bearer {raw}"
    )

    assert without.status_code == 401
    assert with_key.status_code == 200


@pytest.mark.django_db
def test_create_api_key_unknown_chatflow_is_a_command_error():
    with pytest.raises(CommandError, match="not found"):
        run("create_api_key", "x", "--chatflow", "00000000-0000-4000-8000-000000000000")

    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_create_api_key_malformed_chatflow_id_is_a_command_error():
    with pytest.raises(CommandError, match="not found"):
        run("create_api_key", "x", "--chatflow", "not-a-uuid")

    assert not ApiKey.objects.exists()
