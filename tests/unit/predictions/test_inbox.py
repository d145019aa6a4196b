"""The inbox's delivery: a bad message is dropped, a receive that keeps failing closes it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from predictions import events
from predictions.events import INBOX_FAILURES_BEFORE_CLOSING, _Inbox


@pytest.fixture
async def inbox(monkeypatch):
    monkeypatch.setattr(events, "INBOX_RETRY_SECONDS", 0.001)
    inbox = _Inbox(layer=object())
    inbox.channel = "inbox.test"
    inbox.open_mailbox("p1")
    events._inboxes[asyncio.get_running_loop()] = inbox
    yield inbox
    events._inboxes.pop(asyncio.get_running_loop(), None)


async def test_a_receive_that_keeps_failing_closes_the_inbox_for_the_next_reader(inbox, caplog):
    calls = 0

    async def broken(channel: str) -> dict:
        nonlocal calls
        calls += 1
        raise RuntimeError("Event loop is closed")

    await asyncio.wait_for(inbox._deliver(broken), 5)  # returns: no endless retries

    assert calls == INBOX_FAILURES_BEFORE_CLOSING
    assert asyncio.get_running_loop() not in events._inboxes
    closed = [r for r in caplog.records if "closed" in r.getMessage()]
    assert len(closed) == 1
    assert closed[0].levelno == logging.ERROR


async def test_unreadable_messages_between_good_ones_are_dropped_and_delivery_goes_on(inbox):
    answers: list[object] = []
    for seq in range(1, 4):  # each good message after a run of failures just short of closing
        answers += [ValueError("not msgpack")] * (INBOX_FAILURES_BEFORE_CLOSING - 1)
        answers.append({"p": "p1", "seq": seq})
    delivered = asyncio.Event()

    async def receive(channel: str) -> dict:
        if not answers:
            delivered.set()
            await asyncio.Event().wait()  # nothing more comes
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    task = asyncio.ensure_future(inbox._deliver(receive))
    await asyncio.wait_for(delivered.wait(), 5)
    task.cancel()

    mailbox = inbox.take_mailbox("p1")
    assert [(await mailbox.get(0))["seq"] for _ in range(3)] == [1, 2, 3]
    assert events._inboxes[asyncio.get_running_loop()] is inbox  # still this loop's inbox
