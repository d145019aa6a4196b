"""flowsite.middleware.CorsMiddleware, and chatbotConfig.allowedOrigins on predictions."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from predictions.models import Prediction
from tests.unit.helpers import (
    acreate_chatflow,
    error_of,
    post_json,
    prediction_url,
    read_stream,
)

ORIGIN = "https://widget.example"


@pytest.mark.django_db(transaction=True)
async def test_cors_preflight_answers_204_with_methods_and_echoed_headers(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await api.options(
        prediction_url(chatflow.id),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-widget-version, authorization",
        },
    )

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    methods = {m.strip() for m in response["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT"} <= methods
    assert (
        response["Access-Control-Allow-Headers"] == "content-type, x-widget-version, authorization"
    )
    assert await Prediction.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_cors_json_prediction_carries_allow_origin(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"}, Origin=ORIGIN)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.django_db(transaction=True)
async def test_cors_sse_prediction_carries_allow_origin(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi", "streaming": True}, Origin=ORIGIN
    )
    await read_stream(response)

    assert response["Content-Type"] == "text/event-stream"
    assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.django_db(transaction=True)
async def test_cors_error_response_carries_allow_origin(api: AsyncClient):
    response = await post_json(
        api,
        prediction_url("00000000-0000-4000-8000-000000000000"),
        {"question": "hi"},
        Origin=ORIGIN,
    )

    assert response.status_code == 404
    assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.django_db(transaction=True)
async def test_cors_management_api_refusal_carries_allow_origin(api: AsyncClient):
    response = await api.get("/api/v1/chatflows", headers={"Origin": ORIGIN})

    assert response.status_code in (401, 403)
    assert response["Access-Control-Allow-Origin"] == "*"


async def test_cors_ping_carries_allow_origin(api: AsyncClient):
    response = await api.get("/api/v1/ping", headers={"Origin": ORIGIN})

    assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.django_db(transaction=True)
async def test_cors_listed_origin_is_echoed(api: AsyncClient, settings):
    settings.CORS_ORIGINS = ["https://a.example"]
    chatflow = await acreate_chatflow()

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://a.example"
    )

    assert response["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Origin" in response["Vary"]


@pytest.mark.django_db(transaction=True)
async def test_cors_unlisted_origin_gets_no_allow_origin(api: AsyncClient, settings):
    settings.CORS_ORIGINS = ["https://a.example"]
    chatflow = await acreate_chatflow()

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://b.example"
    )

    assert "Access-Control-Allow-Origin" not in response


@pytest.mark.django_db(transaction=True)
async def test_cors_unlisted_origin_preflight_gets_no_allow_origin(api: AsyncClient, settings):
    settings.CORS_ORIGINS = ["https://a.example"]

    response = await api.options(
        "/api/v1/prediction/x",
        headers={"Origin": "https://b.example", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response


@pytest.mark.django_db(transaction=True)
async def test_cors_vary_keeps_cookie_when_adding_origin(api: AsyncClient, settings, staff_user):
    settings.CORS_ORIGINS = ["https://a.example"]
    await api.aforce_login(staff_user)

    response = await api.get("/api/v1/chatflows", headers={"Origin": "https://a.example"})

    assert response.status_code == 200
    vary = {v.strip() for v in response["Vary"].split(",")}
    assert {"Origin", "Cookie"} <= vary


async def test_cors_leaves_non_api_paths_alone(api: AsyncClient):
    response = await api.get("/healthz", headers={"Origin": ORIGIN})

    assert "Access-Control-Allow-Origin" not in response


@pytest.mark.django_db(transaction=True)
async def test_cors_chatbot_allowed_origins_refuses_other_origins(api: AsyncClient):
    chatflow = await acreate_chatflow(chatbot_config={"allowedOrigins": ["https://ok.example"]})

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://evil.example"
    )

    assert response.status_code == 403
    assert error_of(response)["code"] == "origin_not_allowed"
    assert await Prediction.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
async def test_cors_chatbot_allowed_origins_accepts_listed_origin(api: AsyncClient):
    chatflow = await acreate_chatflow(chatbot_config={"allowedOrigins": ["https://ok.example/"]})

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://ok.example"
    )

    assert response.status_code == 200
    assert response.json()["text"]
