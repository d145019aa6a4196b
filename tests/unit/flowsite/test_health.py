"""flowsite.health: /healthz (the process answers) and /readyz (its database answers)."""

from __future__ import annotations

import pytest
from django.test import AsyncClient


async def test_healthz_answers_ok(api: AsyncClient):
    response = await api.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mode": "main"}


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_ready_in_main_mode(api: AsyncClient):
    response = await api.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "mode": "main"}


async def test_ping_answers_pong(api: AsyncClient):
    response = await api.get("/api/v1/ping")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"pong"
