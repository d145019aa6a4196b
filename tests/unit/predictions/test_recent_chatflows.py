"""Chatflows reused for predictions (CHATFLOW_CACHE_SECONDS); answers taken from the live end."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from django.test import AsyncClient

from predictions import selectors, services
from predictions.models import Chatflow, Prediction
from tests.unit.helpers import acreate_chatflow, error_of, post_json, prediction_url, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class _Clock:
    """Stands in for time.monotonic in selectors, so expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(selectors, "time", SimpleNamespace(monotonic=clock))
    return clock


async def _predict(api: AsyncClient, chatflow_id: object):
    return await post_json(api, prediction_url(chatflow_id), {"question": "hi"})


async def test_chatflow_changed_elsewhere_applies_after_the_cache_time(
    api: AsyncClient, settings, clock: _Clock
):
    settings.CHATFLOW_CACHE_SECONDS = 1.0
    chatflow = await acreate_chatflow()
    assert (await _predict(api, chatflow.id)).status_code == 200
    # As another process would: no signal reaches this one.
    await Chatflow.objects.filter(id=chatflow.id).aupdate(
        chatbot_config={"allowedOrigins": ["https://only.example"]}
    )

    clock.now += 0.5
    still = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://other.example"
    )
    clock.now += 0.6
    later = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://other.example"
    )

    assert still.status_code == 200
    assert later.status_code == 403
    assert error_of(later)["code"] == "origin_not_allowed"


async def test_chatflow_saved_in_this_process_applies_at_once(
    api: AsyncClient, settings, clock: _Clock
):
    settings.CHATFLOW_CACHE_SECONDS = 60.0
    chatflow = await acreate_chatflow()
    assert (await _predict(api, chatflow.id)).status_code == 200

    stored = await Chatflow.objects.aget(id=chatflow.id)
    stored.chatbot_config = {"allowedOrigins": ["https://only.example"]}
    await stored.asave()
    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://other.example"
    )

    assert response.status_code == 403


async def test_chatflow_deleted_elsewhere_is_404_not_an_error(
    api: AsyncClient, settings, clock: _Clock
):
    settings.CHATFLOW_CACHE_SECONDS = 60.0
    chatflow = await acreate_chatflow()
    assert (await _predict(api, chatflow.id)).status_code == 200
    await Chatflow.objects.filter(id=chatflow.id).adelete()
    # Deleted through another process: this one still remembers the chatflow.
    selectors._recent_chatflows[chatflow.id] = (clock.now + 60, chatflow)

    response = await _predict(api, chatflow.id)

    assert response.status_code == 404
    assert error_of(response)["code"] == "chatflow_not_found"
    assert await Prediction.objects.acount() == 0
    assert chatflow.id not in selectors._recent_chatflows


async def test_chatflow_cache_off_reads_every_time(api: AsyncClient, settings, clock: _Clock):
    settings.CHATFLOW_CACHE_SECONDS = 0
    chatflow = await acreate_chatflow()
    assert (await _predict(api, chatflow.id)).status_code == 200
    await Chatflow.objects.filter(id=chatflow.id).aupdate(
        chatbot_config={"allowedOrigins": ["https://only.example"]}
    )

    response = await post_json(
        api, prediction_url(chatflow.id), {"question": "hi"}, Origin="https://other.example"
    )

    assert response.status_code == 403


async def test_unknown_chatflow_is_not_remembered(api: AsyncClient, settings, clock: _Clock):
    settings.CHATFLOW_CACHE_SECONDS = 60.0
    chatflow_id = "5a0c3f0e-1d2b-4c59-9a77-0e6c1f0d2b11"
    assert (await _predict(api, chatflow_id)).status_code == 404

    await acreate_chatflow(id=chatflow_id)

    assert (await _predict(api, chatflow_id)).status_code == 200


# --- the answer of a waiting request -----------------------------------------------------------


async def test_json_answer_comes_from_the_live_end_without_reading_it_back(
    api: AsyncClient, monkeypatch
):
    chatflow = await acreate_chatflow()
    reads = []
    real_get = Prediction.objects.get

    def counting_get(*args, **kwargs):
        reads.append(kwargs)
        return real_get(*args, **kwargs)

    monkeypatch.setattr(Prediction.objects, "get", counting_get)

    response = await _predict(api, chatflow.id)

    stored = await Prediction.objects.aget(id=response["X-Prediction-Id"])
    assert response.status_code == 200
    assert json.loads(response.content) == stored.result
    assert reads == []


async def test_json_answer_without_a_live_result_reads_the_database(api: AsyncClient, monkeypatch):
    chatflow = await acreate_chatflow()
    end = services.Publisher.end

    async def end_without_result(self, name, data, result=None):
        await end(self, name, data)

    monkeypatch.setattr(services.Publisher, "end", end_without_result)

    response = await _predict(api, chatflow.id)

    stored = await Prediction.objects.aget(id=response["X-Prediction-Id"])
    assert response.status_code == 200
    assert json.loads(response.content) == stored.result


async def test_an_expired_chatflow_is_read_once_while_others_keep_their_copy(
    settings, clock: _Clock, monkeypatch
):
    settings.CHATFLOW_CACHE_SECONDS = 1.0
    chatflow = await acreate_chatflow()
    first = await selectors.achatflow_get_recent(chatflow.id)
    clock.now += 2
    reads = []
    release = asyncio.Event()
    real_get = selectors.achatflow_get

    async def slow_get(pk):
        reads.append(pk)
        await release.wait()
        return await real_get(pk)

    monkeypatch.setattr(selectors, "achatflow_get", slow_get)

    refreshing = asyncio.create_task(selectors.achatflow_get_recent(chatflow.id))

    async def reading() -> bool:
        return bool(reads)

    await wait_until(reading)
    meanwhile = [  # with a second read, these would wait for `release` (and time out)
        await asyncio.wait_for(selectors.achatflow_get_recent(chatflow.id), 5) for _ in range(5)
    ]
    release.set()
    fresh = await refreshing

    assert len(reads) == 1
    assert all(copy is first for copy in meanwhile)
    assert fresh is not first
    assert fresh.id == chatflow.id


async def test_a_read_that_a_save_overtook_is_not_remembered(settings, clock: _Clock, monkeypatch):
    settings.CHATFLOW_CACHE_SECONDS = 60.0
    chatflow = await acreate_chatflow()
    release = asyncio.Event()
    real_get = selectors.achatflow_get
    reads = []

    async def slow_get(pk):  # reads the row at once, returns it only when released
        reads.append(pk)
        found = await real_get(pk)
        await release.wait()
        return found

    monkeypatch.setattr(selectors, "achatflow_get", slow_get)
    reading = asyncio.create_task(selectors.achatflow_get_recent(chatflow.id))

    async def read_begun() -> bool:
        return bool(reads)

    await wait_until(read_begun)
    stored = await Chatflow.objects.aget(id=chatflow.id)
    stored.name = "renamed"
    await stored.asave()  # this process's save, after the read began
    release.set()
    await reading

    assert chatflow.id not in selectors._recent_chatflows
