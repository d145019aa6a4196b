"""Rate limits in queue mode: counters in Redis, shared by every web process, keyed by config."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from redis.exceptions import ConnectionError as RedisConnectionError

from predictions import clients, ratelimit, services
from predictions.exceptions import PredictionError
from tests.conftest import offline_flow

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = {"rateLimit": {"limitMax": "2", "limitDuration": "30", "limitMsg": "Easy!"}}


async def _chatflow(api_config=LIMIT):
    return await sync_to_async(services.chatflow_create)(
        name="limited", flow_data=offline_flow(memory=False), api_config=api_config
    )


async def test_counters_live_in_redis_with_the_window_as_ttl(queue_mode):
    chatflow = await _chatflow()

    await ratelimit.acheck(chatflow, "203.0.113.1")
    # Another web process: its own clients, the same Redis.
    clients.reset_clients()
    await ratelimit.acheck(chatflow, "203.0.113.1")
    with pytest.raises(PredictionError) as info:
        await ratelimit.acheck(chatflow, "203.0.113.1")

    assert info.value.status == 429
    assert info.value.code == "rate_limited"
    assert info.value.message == "Easy!"
    assert 1 <= int(info.value.headers["Retry-After"]) <= 30
    key = ratelimit.counter_key(chatflow.id, ratelimit.parse(LIMIT), "203.0.113.1")
    assert int(queue_mode.get(key)) == 3
    assert 0 < queue_mode.ttl(key) <= 30
    assert not ratelimit.local_counters._counters
    await ratelimit.acheck(chatflow, "203.0.113.2")


async def test_a_changed_limit_uses_fresh_counters_everywhere(queue_mode):
    chatflow = await _chatflow()
    for _ in range(2):
        await ratelimit.acheck(chatflow, "203.0.113.1")
    with pytest.raises(PredictionError):
        await ratelimit.acheck(chatflow, "203.0.113.1")

    chatflow.api_config = {"rateLimit": {"limitMax": 3, "limitDuration": 30}}
    await ratelimit.acheck(chatflow, "203.0.113.1")

    chatflow.api_config = {"rateLimit": {"limitMax": 3, "limitDuration": 30, "status": False}}
    for _ in range(5):
        await ratelimit.acheck(chatflow, "203.0.113.1")


async def test_redis_trouble_lets_the_request_through(queue_mode, monkeypatch):
    chatflow = await _chatflow({"rateLimit": {"limitMax": 1, "limitDuration": 30}})

    async def broken(key: str, duration: int):
        raise RedisConnectionError("down")

    monkeypatch.setattr(ratelimit, "_redis_hit", broken)
    for _ in range(3):
        await ratelimit.acheck(chatflow, "203.0.113.1")
