"""API test fixtures (see tests/unit/api_fixtures.py)."""

from tests.unit.api_fixtures import _drain_predictions, _fast_flush, _fast_passwords, api

__all__ = ["_drain_predictions", "_fast_flush", "_fast_passwords", "api"]
