"""A database or Redis that is away: 503 with a stable code, and retried writes of a running one."""

from __future__ import annotations

import json

import pytest
from django.db import InterfaceError, OperationalError
from django.test import AsyncClient
from redis.exceptions import ConnectionError as RedisConnectionError

from predictions import selectors, services
from predictions.exceptions import api_exception_handler
from tests.unit.helpers import acreate_chatflow, error_of, post_json, prediction_url

pytestmark = pytest.mark.django_db(transaction=True)


def _unreachable(exc: Exception):
    async def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("exc", [OperationalError("gone"), InterfaceError("closed")])
async def test_prediction_create_database_away_is_503_database_unavailable(
    api: AsyncClient, monkeypatch, exc
):
    monkeypatch.setattr(selectors, "achatflow_get", _unreachable(exc))

    response = await post_json(api, prediction_url("00000000-0000-4000-8000-000000000000"), {})

    assert response.status_code == 503
    assert error_of(response)["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"


async def test_prediction_create_redis_away_is_503_queue_unavailable(api: AsyncClient, monkeypatch):
    monkeypatch.setattr(selectors, "achatflow_get", _unreachable(RedisConnectionError("refused")))

    response = await post_json(api, prediction_url("00000000-0000-4000-8000-000000000000"), {})

    assert response.status_code == 503
    assert error_of(response)["code"] == "queue_unavailable"


def test_drf_handler_maps_database_away_to_503():
    response = api_exception_handler(OperationalError("gone"), {})

    assert response.status_code == 503
    assert response.data["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"


async def test_prediction_create_names_the_prediction_in_a_header(api: AsyncClient):
    chatflow = await acreate_chatflow()

    response = await post_json(api, prediction_url(chatflow.id), {"question": "hi"})

    assert response.status_code == 200
    body = json.loads(response.content)
    detail = await api.get(f"/api/v1/predictions/{response['X-Prediction-Id']}")
    assert json.loads(detail.content)["result"]["chatMessageId"] == body["chatMessageId"]


async def test_aretry_database_rides_out_a_short_outage(monkeypatch):
    monkeypatch.setattr(services, "DATABASE_RETRY_SECONDS", 5.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "saved"

    assert await services.aretry_database(flaky) == "saved"
    assert len(calls) == 3


async def test_aretry_database_gives_up_after_its_bound(monkeypatch):
    monkeypatch.setattr(services, "DATABASE_RETRY_SECONDS", 0.3)

    def down() -> None:
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError):
        await services.aretry_database(down)
