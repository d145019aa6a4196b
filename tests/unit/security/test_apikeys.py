"""API keys: the management API (/apikey), the admin's revoke action, and what a key opens."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from predictions import services
from predictions.models import ApiKey, hash_api_key
from tests.unit.helpers import error_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def manager() -> tuple[ApiKey, str]:
    return services.apikey_create(name="manager", can_manage=True)


def _auth(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def test_create_returns_the_key_once_and_stores_only_its_hash(manager):
    _, raw = manager
    response = Client().post(
        "/api/v1/apikey", {"keyName": "widget"}, content_type="application/json", headers=_auth(raw)
    )

    assert response.status_code == 200
    body = response.json()
    assert body["keyName"] == "widget"
    assert body["canManage"] is False
    assert body["chatFlows"] == []
    key = ApiKey.objects.get(id=body["id"])
    assert key.key_hash == hash_api_key(body["apiKey"])
    listed = Client().get("/api/v1/apikey", headers=_auth(raw)).json()
    shown = next(k for k in listed if k["id"] == body["id"])
    assert shown["apiKey"] != body["apiKey"]
    assert shown["apiKey"].startswith(key.prefix)
    assert body["apiKey"] not in str(listed)


def test_list_names_the_chatflows_a_key_guards(manager, make_chatflow):
    _, raw = manager
    key, _ = services.apikey_create(name="guard")
    chatflow = make_chatflow(name="guarded", api_key=key)

    listed = Client().get("/api/v1/apikey", headers=_auth(raw)).json()

    shown = next(k for k in listed if k["id"] == str(key.id))
    assert shown["chatFlows"][0]["id"] == str(chatflow.id)
    assert shown["chatFlows"][0]["flowName"] == "guarded"


def test_created_key_opens_its_chatflow_and_revoking_closes_it(manager, make_chatflow):
    _, manage_raw = manager
    created = (
        Client()
        .post(
            "/api/v1/apikey",
            {"keyName": "widget"},
            content_type="application/json",
            headers=_auth(manage_raw),
        )
        .json()
    )
    key = ApiKey.objects.get(id=created["id"])
    chatflow = make_chatflow(api_key=key)
    url = f"/api/v1/chatmessage/abort/{chatflow.id}/chat-1"

    assert Client().put(url, headers=_auth(created["apiKey"])).status_code == 200
    assert Client().put(url).status_code == 401

    revoked = Client().delete(f"/api/v1/apikey/{key.id}", headers=_auth(manage_raw))
    assert revoked.status_code == 200
    assert revoked.json() == {"raw": [], "affected": 1}
    response = Client().put(url, headers=_auth(created["apiKey"]))
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert str(key.id) not in str(Client().get("/api/v1/apikey", headers=_auth(manage_raw)).json())


def test_revoking_an_unknown_or_revoked_key_is_404(manager):
    _, raw = manager
    other, _ = services.apikey_create(name="other")
    services.apikey_revoke(key=other)
    for key_id in (other.id, "not-a-uuid", "00000000-0000-4000-8000-000000000000"):
        response = Client().delete(f"/api/v1/apikey/{key_id}", headers=_auth(raw))
        assert response.status_code == 404
        assert error_of(response)["code"] == "api_key_not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/v1/apikey"), ("post", "/api/v1/apikey"), ("delete", "/api/v1/apikey/x")],
)
def test_apikey_routes_refuse_anonymous_and_chatflow_keys(method, path, make_chatflow):
    key, raw = services.apikey_create(name="chatflow key")
    make_chatflow(api_key=key)
    anonymous = getattr(Client(), method)(path, content_type="application/json")
    assert anonymous.status_code in (401, 403)
    error_of(anonymous)
    with_chatflow_key = getattr(Client(), method)(
        path, content_type="application/json", headers=_auth(raw)
    )
    assert with_chatflow_key.status_code == 401
    assert error_of(with_chatflow_key)["code"] == "invalid_api_key"


def test_apikey_create_validates_its_body(manager):
    _, raw = manager
    for body in ({}, {"keyName": ""}, {"keyName": 5}, {"keyName": "k", "canManage": "yes"}):
        response = Client().post(
            "/api/v1/apikey", body, content_type="application/json", headers=_auth(raw)
        )
        assert response.status_code == 400, body
        error_of(response)


def test_session_writes_need_the_csrf_token(staff_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    response = client.post("/api/v1/apikey", {"keyName": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in error_of(response)["message"]
    assert not ApiKey.objects.exists()


# --- admin -------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _csrf(client: Client, url: str) -> str:
    client.get(url)
    return client.cookies["csrftoken"].value


def test_admin_revoke_action_revokes_and_is_logged(admin_client: Client):
    key, raw = services.apikey_create(name="leaked")
    keep, _ = services.apikey_create(name="keep")
    url = reverse("admin:predictions_apikey_changelist")
    token = _csrf(admin_client, url)

    response = admin_client.post(
        url,
        {"action": "revoke_keys", "_selected_action": [str(key.id)], "csrfmiddlewaretoken": token},
    )

    assert response.status_code == 302
    key.refresh_from_db()
    keep.refresh_from_db()
    assert key.revoked_at is not None
    assert keep.revoked_at is None
    assert not key.matches(raw)
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.filter(object_id=str(key.id)).exists()


def test_admin_revoke_action_without_csrf_token_is_refused(admin_client: Client):
    key, _ = services.apikey_create(name="leaked")
    response = admin_client.post(
        reverse("admin:predictions_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [str(key.id)]},
    )
    assert response.status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


def test_admin_add_shows_the_key_once(admin_client: Client):
    url = reverse("admin:predictions_apikey_add")
    token = _csrf(admin_client, url)
    response = admin_client.post(
        url, {"name": "new", "csrfmiddlewaretoken": token, "_save": "Save"}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    key = ApiKey.objects.get(name="new")
    raw = next(m.split(": ")[-1] for m in shown if "shown only once" in m)
    assert key.matches(raw)
    page = admin_client.get(reverse("admin:predictions_apikey_change", args=[key.id]))
    assert raw not in page.content.decode()
