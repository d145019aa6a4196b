"""The asker's mailbox: messages in order, a wait that ends with a message or its time."""

from __future__ import annotations

import asyncio

from predictions.events import _Mailbox


async def test_messages_put_before_a_read_come_at_once_in_order():
    mailbox = _Mailbox()
    mailbox.put({"seq": 1})
    mailbox.put({"seq": 2})

    assert await mailbox.get(0) == {"seq": 1}
    assert await mailbox.get(0) == {"seq": 2}


async def test_a_read_waits_for_the_next_message():
    mailbox = _Mailbox()
    reading = asyncio.ensure_future(mailbox.get(5))
    await asyncio.sleep(0)
    assert not reading.done()

    mailbox.put({"seq": 1})

    assert await asyncio.wait_for(reading, 1) == {"seq": 1}


async def test_a_read_gives_none_when_nothing_comes_in_time_and_the_next_still_gets_it():
    mailbox = _Mailbox()

    assert await mailbox.get(0.01) is None

    mailbox.put({"seq": 1})
    assert await mailbox.get(0) == {"seq": 1}


async def test_a_cancelled_read_loses_no_message():
    mailbox = _Mailbox()
    reading = asyncio.ensure_future(mailbox.get(5))
    await asyncio.sleep(0)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)

    mailbox.put({"seq": 1})

    assert await mailbox.get(0) == {"seq": 1}
