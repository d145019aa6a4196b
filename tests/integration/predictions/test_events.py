"""RedisTransport on a real Redis: one pipeline writes the stream and the live push."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisSingleShardConnection
from redis.exceptions import ConnectionError, ResponseError

from predictions import clients, events
from predictions.events import RedisTransport
from predictions.streaming import (
    CHANNEL_EVENT_TYPE,
    Event,
    encode_event,
    group_name,
    stream_key,
)
from tests.unit.helpers import wait_until

pytestmark = pytest.mark.integration

PREDICTION_ID = "7f0c7c38-6d2b-4f0e-9a43-5d5b1e0d0001"


async def test_publish_reaches_a_layer_reader_live_and_the_stream(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(PREDICTION_ID), channel)
    try:
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # the receive subscribes before the publish
        event = Event(seq=1, event="token", data="héllo\u2028")

        await transport.publish(PREDICTION_ID, event)

        message = await asyncio.wait_for(receiving, 5)
        assert message == {"type": CHANNEL_EVENT_TYPE, "p": PREDICTION_ID, **event}
        assert await transport.last_seq(PREDICTION_ID) == 1
        ttl = await clients.get_async_redis().ttl(stream_key(PREDICTION_ID))
        assert 0 < ttl <= 60
    finally:
        await layer.group_discard(group_name(PREDICTION_ID), channel)


async def test_more_commands_at_once_than_connections_wait_for_one(queue_mode, settings):
    settings.REDIS = dataclasses.replace(settings.REDIS, max_connections=3)
    clients.reset_clients()
    redis = clients.get_async_redis()

    # redis-py's default pool refuses a command at once ("Too many connections") past 100.
    await asyncio.gather(*(redis.incr("flowsite-test-counter") for _ in range(300)))

    assert int(await redis.get("flowsite-test-counter")) == 300
    assert len(redis.connection_pool._available_connections) <= 3


async def test_publish_of_a_repeated_event_is_harmless(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    event = Event(seq=1, event="start", data="")

    await transport.publish(PREDICTION_ID, event)
    await transport.publish(PREDICTION_ID, event)  # as after a retried write that had landed

    assert await transport.last_seq(PREDICTION_ID) == 1


async def test_a_batch_is_one_live_message_and_every_event_in_the_stream(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    reader = transport.read(PREDICTION_ID, after_seq=1, heartbeat=5.0)
    first = asyncio.ensure_future(anext(reader))
    layer = get_channel_layer()
    group_channel = layer._get_group_channel_name(group_name(PREDICTION_ID))

    async def joined() -> bool:  # else it would replay the batch from the stream
        [(_, subscribers)] = await clients.get_async_redis().pubsub_numsub(group_channel)
        return subscribers > 0

    await wait_until(joined)
    batch = [Event(seq=seq, event="token", data=f"t{seq}") for seq in (2, 3, 4)]
    end = Event(seq=6, event="end", data="[DONE]", result={"text": "t2t3t4"})

    await transport.publish_many(PREDICTION_ID, batch)
    await transport.publish_many(PREDICTION_ID, [Event(seq=5, event="metadata", data={}), end])
    received = [await asyncio.wait_for(first, 5)]
    received += [event async for event in reader if event is not None]

    assert [e["seq"] for e in received] == [2, 3, 4, 5, 6]
    assert [e["data"] for e in received[:3]] == ["t2", "t3", "t4"]
    assert [e.get("more", False) for e in received] == [True, True, False, True, False]
    assert received[-1]["result"] == {"text": "t2t3t4"}
    entries = await clients.get_async_redis().xrange(stream_key(PREDICTION_ID))
    assert len(entries) == 6


async def test_a_reader_that_joins_after_the_end_replays_the_result(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    end = Event(seq=3, event="end", data="[DONE]", result={"text": "hi", "chatId": "c"})
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    await transport.publish_many(PREDICTION_ID, [Event(seq=2, event="metadata", data={}), end])

    replayed = [e async for e in transport.read(PREDICTION_ID, after_seq=0, heartbeat=5.0) if e]

    assert [e["event"] for e in replayed] == ["start", "metadata", "end"]
    assert replayed[-1]["result"] == {"text": "hi", "chatId": "c"}  # no database read needed
    assert "result" not in replayed[1]


def _kept_channel() -> str:
    """The channel the loop's layer keeps subscribed for good (the inbox, events._Inbox)."""
    inbox = events._inboxes[asyncio.get_running_loop()]
    assert inbox.layer is get_channel_layer()
    assert inbox.channel
    return inbox.channel


async def _joined_channels() -> list[str]:
    """The reader's own channel and its group's channel, once both are subscribed in Redis."""
    layer = get_channel_layer()._get_layer()
    names = [layer._get_group_channel_name(group_name(PREDICTION_ID))]

    async def subscribed() -> bool:
        inbox = events._inboxes.get(asyncio.get_running_loop())
        if inbox is None or inbox.opened is None or not inbox.opened.done():
            return False  # its channel is in the layer's before the inbox knows its name
        own = [name for name in layer.channels if name != _kept_channel()]
        return len(own) == 1 and await _subscribers(names + own) == 2

    await wait_until(subscribed)
    return names + [name for name in layer.channels if name != _kept_channel()]


async def _subscribers(names: list[str]) -> int:
    return sum(count for _, count in await clients.get_async_redis().pubsub_numsub(*names))


async def _started_reader() -> tuple[RedisTransport, Any, asyncio.Future[Any], list[str]]:
    """A reader after `start`, waiting for its next event, once it has joined."""
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    reader = transport.read(PREDICTION_ID, after_seq=1, heartbeat=5.0)
    first = asyncio.ensure_future(anext(reader))
    return transport, reader, first, await _joined_channels()


async def test_a_reader_that_took_the_end_leaves_no_channel_or_subscription(queue_mode):
    transport, reader, first, names = await _started_reader()

    await transport.publish(PREDICTION_ID, Event(seq=2, event="end", data="[DONE]"))
    assert (await asyncio.wait_for(first, 5))["event"] == "end"
    with pytest.raises(StopAsyncIteration):
        await anext(reader)

    layer = get_channel_layer()._get_layer()
    assert list(layer.channels) == [_kept_channel()]
    assert layer.groups == {}

    async def unsubscribed() -> bool:
        return await _subscribers(names) == 0

    await wait_until(unsubscribed)
    # Still listening: with nothing subscribed channels-redis polls only every 100 ms.
    assert await _subscribers([_kept_channel()]) == 1


async def test_a_reader_closed_with_a_message_queued_leaves_no_channel(queue_mode):
    transport, reader, first, names = await _started_reader()
    layer = get_channel_layer()._get_layer()
    [queue] = [q for name, q in layer.channels.items() if name != _kept_channel()]

    await transport.publish(PREDICTION_ID, Event(seq=2, event="token", data="a"))
    assert (await asyncio.wait_for(first, 5))["seq"] == 2
    await transport.publish(PREDICTION_ID, Event(seq=3, event="token", data="b"))

    async def queued() -> bool:  # a message the reader will never take
        return queue.qsize() == 1

    await wait_until(queued)
    await reader.aclose()

    assert list(layer.channels) == [_kept_channel()]
    assert layer.groups == {}

    async def unsubscribed() -> bool:
        return await _subscribers(names) == 0

    await wait_until(unsubscribed)


async def test_a_reader_catches_up_on_a_lost_last_message_long_before_its_heartbeat(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    assert (await anext(reader))["seq"] == 1  # replayed; it then waits for live messages
    waiting = asyncio.ensure_future(anext(reader))
    await _joined_channels()

    # The end reaches the stream but its live message is lost (never published).
    end = Event(seq=2, event="end", data="[DONE]")
    await clients.get_async_redis().xadd(stream_key(PREDICTION_ID), encode_event(end), id="0-2")

    # Within a few catch-up periods (CATCH_UP_SECONDS), not after the 60 s heartbeat.
    got = await asyncio.wait_for(waiting, 10)
    assert got is not None
    assert (got["seq"], got["event"]) == (2, "end")


async def test_a_quiet_reader_looks_in_the_stream_less_and_less_often_until_a_message(
    queue_mode, monkeypatch
):
    # E.g. the answer to a prediction that waits in a long queue: nothing to catch up on.
    monkeypatch.setattr(events, "CATCH_UP_SECONDS", 0.05)
    monkeypatch.setattr(events, "CATCH_UP_MAX_SECONDS", 30.0)
    transport = RedisTransport(max_len=100, ttl=60)
    loop = asyncio.get_running_loop()
    looked: list[float] = []
    replay = transport._try_replay

    async def counted(prediction_id: str, after_seq: int, until_seq: int | None = None):
        if until_seq is None:  # not a gap's
            looked.append(loop.time())
        return await replay(prediction_id, after_seq, until_seq)

    monkeypatch.setattr(transport, "_try_replay", counted)
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    waiting = asyncio.ensure_future(anext(reader))

    async def looked_six_times() -> bool:  # the join's replay, then five quiet looks
        return len(looked) >= 6

    await wait_until(looked_six_times)
    gaps = [later - earlier for earlier, later in itertools.pairwise(looked[1:6])]
    for gap, doubled in zip(gaps, [0.1, 0.2, 0.4, 0.8], strict=True):
        assert gap >= doubled * 0.9

    # A live message sets the wait back: the next look comes in 0.05 s, not 3.2 s.
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    assert (await asyncio.wait_for(waiting, 5))["seq"] == 1
    sent_at = loop.time()
    waiting = asyncio.ensure_future(anext(reader))

    async def looked_again() -> bool:
        return looked[-1] > sent_at

    await wait_until(looked_again, within=1.5)
    await transport.publish(PREDICTION_ID, Event(seq=2, event="end", data="[DONE]"))
    assert (await asyncio.wait_for(waiting, 5))["seq"] == 2


async def test_a_reader_replays_only_once_redis_has_its_subscription(queue_mode, monkeypatch):
    monkeypatch.setattr(events, "CATCH_UP_SECONDS", 60.0)  # only the join may find the event
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    layer = get_channel_layer()
    real_group_add, redis = layer.group_add, clients.get_async_redis()
    real_numsub, real_replay = redis.pubsub_numsub, transport._try_replay
    asked, moved_on, subscribe = asyncio.Event(), asyncio.Event(), asyncio.Event()
    late: list[asyncio.Future[Any]] = []

    async def late_group_add(group: str, channel: str) -> None:
        # The SUBSCRIBE reaches Redis after the reader's next command (Redis may run the
        # reader's replay, on another connection, first).
        async def subscribe_later() -> None:
            await subscribe.wait()
            await real_group_add(group, channel)

        late.append(asyncio.ensure_future(subscribe_later()))
        asked.set()

    async def numsub(*args: Any) -> Any:
        moved_on.set()
        return await real_numsub(*args)

    async def replay(*args: Any) -> Any:
        moved_on.set()
        return await real_replay(*args)

    monkeypatch.setattr(layer, "group_add", late_group_add)
    monkeypatch.setattr(redis, "pubsub_numsub", numsub)
    monkeypatch.setattr(transport, "_try_replay", replay)
    reader = transport.read(PREDICTION_ID, after_seq=1, heartbeat=60.0)
    got = asyncio.ensure_future(anext(reader))
    await asyncio.wait_for(asked.wait(), 5)
    await asyncio.wait_for(moved_on.wait(), 5)  # replayed already, or checking the subscription

    await transport.publish(PREDICTION_ID, Event(seq=2, event="end", data="[DONE]"))  # no one hears
    subscribe.set()

    event = await asyncio.wait_for(got, 5)
    assert event is not None
    assert (event["seq"], event["event"]) == (2, "end")
    await asyncio.gather(*late)


async def test_begin_publishes_the_start_of_a_fresh_run_live_and_to_the_stream(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=5.0)
    first = asyncio.ensure_future(anext(reader))
    await _joined_channels()
    start = Event(seq=1, event="start", data="")

    began = await transport.begin(PREDICTION_ID, "flowsite-test-stop", start)

    assert began == (1, False, True)
    assert await asyncio.wait_for(first, 5) == start  # live
    await reader.aclose()
    assert await transport._replay(PREDICTION_ID, 0) == [start]
    assert 0 < await clients.get_async_redis().ttl(stream_key(PREDICTION_ID)) <= 60


async def test_begin_leaves_a_stream_with_events_or_a_stopped_run_as_they_are(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    start = Event(seq=1, event="start", data="")
    await clients.get_async_redis().set("flowsite-test-stop", "1")

    assert await transport.begin(PREDICTION_ID, "flowsite-test-stop", start) == (0, True, False)
    assert await transport.last_seq(PREDICTION_ID) == 0

    await clients.get_async_redis().delete("flowsite-test-stop")
    earlier = [start, Event(seq=2, event="token", data="a")]
    await transport.publish_many(PREDICTION_ID, earlier)  # an earlier attempt's

    assert await transport.begin(PREDICTION_ID, "flowsite-test-stop", start) == (2, False, False)
    assert await transport._replay(PREDICTION_ID, 0) == earlier


async def _group_subscribers() -> int:
    layer = get_channel_layer()
    return await _subscribers([layer._get_group_channel_name(group_name(PREDICTION_ID))])


async def test_the_askers_reader_takes_its_events_from_its_mailbox_without_joining(queue_mode):
    transport = RedisTransport(max_len=100, ttl=60)
    reply_to = await transport.reserve(PREDICTION_ID)
    assert reply_to == _kept_channel()
    start = Event(seq=1, event="start", data="")
    assert await transport.begin(PREDICTION_ID, "flowsite-test-stop", start, reply_to) == (
        1,
        False,
        True,
    )
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    assert await asyncio.wait_for(anext(reader), 5) == start  # taken before it was read
    assert await _group_subscribers() == 0  # not joined: a joined reader replays after joining
    waiting = asyncio.ensure_future(anext(reader))
    end = Event(seq=3, event="end", data="[DONE]", result={"text": "hi"})

    await transport.publish_many(
        PREDICTION_ID, [Event(seq=2, event="metadata", data={}), end], reply_to
    )

    assert (await asyncio.wait_for(waiting, 5))["seq"] == 2
    assert await anext(reader) == end
    with pytest.raises(StopAsyncIteration):
        await anext(reader)
    assert events._inboxes[asyncio.get_running_loop()]._mailboxes == {}


async def test_a_second_reader_of_the_askers_prediction_joins_and_both_get_everything(
    queue_mode,
):
    transport = RedisTransport(max_len=100, ttl=60)
    reply_to = await transport.reserve(PREDICTION_ID)
    asker = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    other = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    got = [asyncio.ensure_future(anext(asker)), asyncio.ensure_future(anext(other))]

    async def joined() -> bool:
        return await _group_subscribers() == 1

    await wait_until(joined)
    sent = [Event(seq=1, event="start", data=""), Event(seq=2, event="end", data="[DONE]")]
    await transport.publish_many(PREDICTION_ID, sent, reply_to)

    assert [await asyncio.wait_for(future, 5) for future in got] == [{**sent[0], "more": True}] * 2
    assert [e async for e in asker] == [sent[1]]
    assert [e async for e in other] == [sent[1]]


async def test_events_published_here_without_the_inbox_reach_the_askers_mailbox(
    queue_mode, monkeypatch
):
    monkeypatch.setattr(events, "CATCH_UP_SECONDS", 60.0)  # only a live message is in time
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.reserve(PREDICTION_ID)
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    waiting = asyncio.ensure_future(anext(reader))
    abort = [Event(seq=1, event="abort", data="[DONE]"), Event(seq=2, event="end", data="[DONE]")]

    await transport.publish_many(PREDICTION_ID, abort)  # e.g. a cancel of the queued prediction

    assert await asyncio.wait_for(waiting, 5) == {**abort[0], "more": True}
    assert [e async for e in reader] == [abort[1]]


async def test_a_mailbox_nobody_reads_is_dropped_and_a_released_one_at_once(
    queue_mode, monkeypatch
):
    monkeypatch.setattr(events, "MAILBOX_UNREAD_SECONDS", 0.05)
    transport = RedisTransport(max_len=100, ttl=60)
    await transport.reserve("released")
    transport.release("released")
    inbox = events._inboxes[asyncio.get_running_loop()]
    assert inbox._mailboxes == {}

    await transport.reserve(PREDICTION_ID)
    await transport.publish(PREDICTION_ID, Event(seq=1, event="start", data=""))
    assert list(inbox._mailboxes) == [PREDICTION_ID]

    async def dropped() -> bool:
        return inbox._mailboxes == {}

    await wait_until(dropped)
    # Its reader, had it come, joins the group and replays the stream instead.
    reader = transport.read(PREDICTION_ID, after_seq=0, heartbeat=60.0)
    assert (await asyncio.wait_for(anext(reader), 5))["event"] == "start"
    await reader.aclose()


async def test_an_inbox_that_cannot_open_is_no_mailbox_and_tried_again(queue_mode, monkeypatch):
    transport = RedisTransport(max_len=100, ttl=60)
    opened = events._Inbox.open

    async def refused(inbox):
        raise ResponseError("NOPERM this user has no permissions to access the channel")

    monkeypatch.setattr(events._Inbox, "open", refused)
    assert await transport.reserve(PREDICTION_ID) is None  # the reader joins the group instead
    assert asyncio.get_running_loop() not in events._inboxes

    monkeypatch.setattr(events._Inbox, "open", opened)
    assert await transport.reserve(PREDICTION_ID) == _kept_channel()


async def test_an_inbox_refused_by_redis_leaves_no_channel_behind(queue_mode, monkeypatch):
    transport = RedisTransport(max_len=100, ttl=60)
    loop_layer = get_channel_layer()._get_layer()
    subscribe = RedisSingleShardConnection.subscribe

    async def refused(shard, channel):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(RedisSingleShardConnection, "subscribe", refused)
    for _ in range(3):  # a request each, while Redis is down
        assert await transport.reserve(PREDICTION_ID) is None
    assert [c for c in loop_layer.channels if events.INBOX_PREFIX in c] == []

    monkeypatch.setattr(RedisSingleShardConnection, "subscribe", subscribe)
    reply_to = await transport.reserve(PREDICTION_ID)
    assert [c for c in loop_layer.channels if events.INBOX_PREFIX in c] == [reply_to]


async def test_a_resume_joins_the_group_and_leaves_the_askers_mailbox(queue_mode):
    # A resume may already have the end, which only the group's path looks for.
    transport = RedisTransport(max_len=100, ttl=60)
    reply_to = await transport.reserve(PREDICTION_ID)
    sent = [Event(seq=1, event="start", data=""), Event(seq=2, event="end", data="[DONE]")]
    await transport.publish_many(PREDICTION_ID, sent, reply_to)

    async def read_all(after_seq: int) -> list[Event]:
        return [e async for e in transport.read(PREDICTION_ID, after_seq=after_seq, heartbeat=60)]

    resumed = await asyncio.wait_for(read_all(2), 5)

    assert resumed == []
    inbox = events._inboxes[asyncio.get_running_loop()]
    assert list(inbox._mailboxes) == [PREDICTION_ID]  # still the asker's
    asker = await asyncio.wait_for(read_all(0), 5)
    assert [e["seq"] for e in asker] == [1, 2]


async def test_the_inbox_of_a_closed_loop_is_forgotten(queue_mode):
    async def reserve_elsewhere() -> asyncio.AbstractEventLoop:
        await RedisTransport(max_len=100, ttl=60).reserve("elsewhere")
        return asyncio.get_running_loop()

    closed = await asyncio.to_thread(asyncio.run, reserve_elsewhere())  # a loop that ends
    assert closed in events._inboxes
    assert asyncio.get_running_loop() not in events._inboxes

    await RedisTransport(max_len=100, ttl=60).reserve(PREDICTION_ID)

    assert list(events._inboxes) == [asyncio.get_running_loop()]
