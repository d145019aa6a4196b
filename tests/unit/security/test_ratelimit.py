"""Per-chatflow rate limits (apiConfig.rateLimit) in main mode: parsing, counting, the 429."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from predictions import ratelimit, services
from predictions.exceptions import BadRequest
from tests.conftest import offline_flow
from tests.unit.helpers import acreate_chatflow, error_of, post_json, prediction_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_counters():
    ratelimit.local_counters.clear()
    yield
    ratelimit.local_counters.clear()


def limit(max_: object = 2, duration: object = 60, msg: object = "Slow down!", **extra) -> dict:
    return {"rateLimit": {"limitMax": max_, "limitDuration": duration, "limitMsg": msg, **extra}}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (limit(), ratelimit.RateLimit(2, 60, "Slow down!")),
        (limit("10", "60"), ratelimit.RateLimit(10, 60, "Slow down!")),
        (limit(3, 5, "", status=True), ratelimit.RateLimit(3, 5, ratelimit.DEFAULT_MESSAGE)),
        (limit(status=False), None),
        (limit(status="false"), None),
        (limit("", ""), None),
        (limit("x", 60), None),
        (limit(0, 60), None),
        ({}, None),
        ({"rateLimit": "10"}, None),
        ([], None),
    ],
)
def test_parse_reads_flowise_configs(config, expected):
    assert ratelimit.parse(config) == expected


@pytest.mark.parametrize(
    "config",
    [limit("x", 60), limit(5, -1), limit(True, 60), limit(5, 99_999_999), {"rateLimit": []}],
)
def test_check_config_refuses_unusable_limits(config):
    with pytest.raises(BadRequest) as info:
        ratelimit.check_config(config)
    assert info.value.code == "invalid_api_config"


@pytest.mark.parametrize(
    "config", [limit(), limit("10", "60"), limit(status=False, max_="x"), limit("", ""), {}]
)
def test_check_config_accepts_flowise_configs(config):
    ratelimit.check_config(config)


async def _ask(api: AsyncClient, chatflow, **headers) -> object:
    return await post_json(api, prediction_url(chatflow.id), {"question": "hi"}, **headers)


async def test_requests_past_the_limit_get_429_with_retry_after_and_the_message(api):
    chatflow = await acreate_chatflow(api_config=limit(2, 60), flow_data=offline_flow(memory=False))

    statuses = [(await _ask(api, chatflow)).status_code for _ in range(2)]
    refused = await _ask(api, chatflow)

    assert statuses == [200, 200]
    assert refused.status_code == 429
    body = error_of(refused)
    assert body["code"] == "rate_limited"
    assert body["message"] == "Slow down!"
    assert 1 <= int(refused["Retry-After"]) <= 60


async def test_a_changed_limit_applies_at_once_and_a_removed_one_lifts(api):
    chatflow = await acreate_chatflow(api_config=limit(1, 60), flow_data=offline_flow(memory=False))
    assert (await _ask(api, chatflow)).status_code == 200
    assert (await _ask(api, chatflow)).status_code == 429

    await sync_to_async(services.chatflow_update)(chatflow=chatflow, api_config=limit(2, 60))
    assert (await _ask(api, chatflow)).status_code == 200
    assert (await _ask(api, chatflow)).status_code == 200
    assert (await _ask(api, chatflow)).status_code == 429

    await sync_to_async(services.chatflow_update)(chatflow=chatflow, api_config={})
    assert (await _ask(api, chatflow)).status_code == 200


async def test_clients_are_counted_apart_only_through_a_trusted_proxy(api, settings):
    chatflow = await acreate_chatflow(api_config=limit(1, 60), flow_data=offline_flow(memory=False))
    first = await _ask(api, chatflow, **{"X-Forwarded-For": "203.0.113.1"})
    spoofed = await _ask(api, chatflow, **{"X-Forwarded-For": "203.0.113.2"})
    assert (first.status_code, spoofed.status_code) == (200, 429)

    settings.TRUST_PROXY = True
    ratelimit.local_counters.clear()
    assert (await _ask(api, chatflow, **{"X-Forwarded-For": "203.0.113.1"})).status_code == 200
    assert (await _ask(api, chatflow, **{"X-Forwarded-For": "203.0.113.2"})).status_code == 200
    assert (await _ask(api, chatflow, **{"X-Forwarded-For": "203.0.113.1"})).status_code == 429


async def test_other_chatflows_and_other_routes_are_not_counted(api):
    limited = await acreate_chatflow(api_config=limit(1, 60), flow_data=offline_flow(memory=False))
    other = await acreate_chatflow(flow_data=offline_flow(memory=False))
    assert (await _ask(api, limited)).status_code == 200
    for _ in range(3):
        assert (await _ask(api, other)).status_code == 200
        assert (await api.get(f"/api/v1/chatflows-streaming/{limited.id}")).status_code == 200


@pytest.mark.parametrize(
    ("forwarded", "proxies", "expected"),
    [
        ("203.0.113.9", 1, "203.0.113.9"),
        ("198.51.100.1, 203.0.113.9", 1, "203.0.113.9"),
        ("198.51.100.1, 203.0.113.9", 2, "198.51.100.1"),
        ("203.0.113.9", 3, "203.0.113.9"),
        (" , ", 1, "10.0.0.1"),
        (None, 1, "10.0.0.1"),
    ],
)
def test_client_ip_with_trust_proxy(settings, forwarded, proxies, expected):
    settings.TRUST_PROXY = True
    settings.NUMBER_OF_PROXIES = proxies
    assert ratelimit.client_ip("10.0.0.1", forwarded) == expected


def test_client_ip_ignores_forwarded_for_without_trust_proxy(settings):
    settings.TRUST_PROXY = False
    assert ratelimit.client_ip("10.0.0.1", "203.0.113.9") == "10.0.0.1"


def test_scope_ip_reads_an_asgi_scope(settings):
    settings.TRUST_PROXY = True
    scope = {"client": ("10.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"203.0.113.9")]}
    assert ratelimit.scope_ip(scope) == "203.0.113.9"
    assert ratelimit.scope_ip({}) == "unknown"


def test_the_local_window_restarts_after_its_duration(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    assert ratelimit.local_counters.hit("k", 10) == (1, 10.0)
    assert ratelimit.local_counters.hit("k", 10)[0] == 2
    now[0] += 10.5
    assert ratelimit.local_counters.hit("k", 10) == (1, 10.0)
