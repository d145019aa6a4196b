"""Who may call what: each /api/v1 route is public, guarded by the chatflow's key, or management."""

from __future__ import annotations

import pytest
from django.test import Client

from predictions import services
from predictions.models import Prediction
from predictions.urls import urlpatterns
from tests.conftest import offline_flow
from tests.unit.helpers import error_of

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = {"ping", "chatflow-streaming", "public-chatbot-config"}
# Open for a chatflow without a key; with one: its key, a management key or a staff session.
PREDICTION = {"create", "detail", "events", "cancel", "abort"}
MANAGEMENT = {
    "chatflow-list",
    "chatflow-detail",
    "chatmessage-list",
    "apikey-list",
    "apikey-detail",
    "monitor-job-queue",
}
METHODS = ("get", "post", "put", "delete", "patch")
ID = "00000000-0000-4000-8000-000000000000"


def _url(route) -> str:
    return (
        "/api/v1/"
        + str(route.pattern).replace("<str:", "<").split("<")[0]
        + ("/".join([ID] * str(route.pattern).count("<")))
    )


def test_every_route_is_classified():
    """A new route must be put in one of the sets above (and so get an access test)."""
    names = {route.name for route in urlpatterns}
    assert names == PUBLIC | PREDICTION | MANAGEMENT


@pytest.mark.parametrize("route", [r for r in urlpatterns if r.name in MANAGEMENT], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_management_routes_never_answer_anonymous_callers(route, method, make_chatflow):
    make_chatflow(id=ID)
    response = getattr(Client(), method)(_url(route), content_type="application/json")
    assert response.status_code in (401, 403)
    error_of(response)


@pytest.mark.parametrize("route", [r for r in urlpatterns if r.name in MANAGEMENT], ids=str)
def test_management_routes_refuse_non_staff_sessions(route, django_user_model, make_chatflow):
    make_chatflow(id=ID)
    client = Client()
    client.force_login(django_user_model.objects.create_user("plain", "p@x.org", "pw"))
    response = client.get(_url(route))
    assert response.status_code in (401, 403)
    error_of(response)


def test_monitor_is_for_superusers_only(staff_user, django_user_model):
    client = Client()
    client.force_login(staff_user)
    assert client.get("/api/v1/monitor/job_queue").status_code == 403
    root = Client()
    root.force_login(django_user_model.objects.create_superuser("root", "r@x.org", "pw"))
    assert root.get("/api/v1/monitor/job_queue").status_code == 200


@pytest.fixture
def guarded(make_chatflow):
    """A chatflow bound to a key, with one finished prediction."""
    key, raw = services.apikey_create(name="guard")
    chatflow = make_chatflow(api_key=key, flow_data=offline_flow(memory=False))
    prediction = Prediction.objects.create(
        chatflow=chatflow, chat_id="c", session_id="c", status="succeeded"
    )
    urls = {
        "create": (f"/api/v1/prediction/{chatflow.id}", "post"),
        "detail": (f"/api/v1/predictions/{prediction.id}", "get"),
        "events": (f"/api/v1/predictions/{prediction.id}/events", "get"),
        "cancel": (f"/api/v1/predictions/{prediction.id}/cancel", "post"),
        "abort": (f"/api/v1/chatmessage/abort/{chatflow.id}/c", "put"),
    }
    return raw, urls


@pytest.mark.parametrize("name", sorted(PREDICTION))
def test_prediction_routes_of_a_guarded_chatflow_need_its_key(guarded, name):
    raw, urls = guarded
    url, method = urls[name]
    body = {} if method == "get" else {"data": '{"question": "hi"}'}

    def call(**headers):
        return getattr(Client(), method)(
            url, content_type="application/json", headers=headers, **body
        )

    anonymous = call()
    assert anonymous.status_code == 401
    assert error_of(anonymous)["code"] == "api_key_required"
    wrong = call(Authorization="Bearer fs_nope")
    assert wrong.status_code == 401
    assert error_of(wrong)["code"] == "invalid_api_key"
    assert call(Authorization=f"Bearer {raw}").status_code == 200


def test_a_staff_session_standing_in_for_the_key_needs_csrf(guarded, staff_user):
    _, urls = guarded
    url, _ = urls["abort"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    refused = client.put(url)
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "csrf_failed"

    token = "t" * 32
    client.cookies["csrftoken"] = token
    assert client.put(url, headers={"X-CSRFToken": token}).status_code == 200
    # Reads need no token.
    assert client.get(urls["detail"][0]).status_code == 200


@pytest.mark.parametrize("method", ["post", "put", "delete"])
@pytest.mark.parametrize(
    "path", ["ping", f"chatflows-streaming/{ID}", f"public-chatbotConfig/{ID}"], ids=str
)
def test_public_routes_answer_other_methods_with_405(path, method):
    response = getattr(Client(enforce_csrf_checks=True), method)(f"/api/v1/{path}")
    assert response.status_code == 405
    assert "GET" in response["Allow"]
    assert error_of(response)["code"] == "method_not_allowed"
