"""Fixtures for tests that call the API: imported by the conftests of predictions/ and flowsite/."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from tests.unit.helpers import drain_predictions, fast_flush


@pytest.fixture
def api() -> AsyncClient:
    return AsyncClient()


@pytest.fixture(autouse=True, scope="module")
def _fast_flush():
    yield from fast_flush()


@pytest.fixture(autouse=True)
async def _drain_predictions():
    """Every main-mode prediction task ends before the test's tables are emptied."""
    yield
    await drain_predictions()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
