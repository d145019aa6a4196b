"""Publisher: sequence numbers, closing events, and token batches (TOKEN_COALESCE_MS)."""

from __future__ import annotations

import pytest

from predictions.events import Publisher
from predictions.streaming import SSE_HEARTBEAT, Event
from tests.unit.helpers import wait_until


class RecordingTransport:
    """Keeps each publish_many call's events."""

    def __init__(self) -> None:
        self.writes: list[list[Event]] = []
        self.replies_to: list[str | None] = []

    async def publish(self, prediction_id: str, event: Event) -> None:
        await self.publish_many(prediction_id, [event])

    async def publish_many(
        self, prediction_id: str, events: list[Event], reply_to: str | None = None
    ) -> None:
        self.writes.append(list(events))
        self.replies_to.append(reply_to)

    def shape(self) -> list[list[tuple[int, str]]]:
        return [[(e["seq"], e["event"]) for e in write] for write in self.writes]


async def test_every_write_goes_to_the_askers_inbox_too():
    transport = RecordingTransport()
    publisher = Publisher(transport, "p", coalesce=0.01, reply_to="inbox.1")

    await publisher.emit("token", "a")
    await publisher.end("metadata", {})

    assert transport.replies_to == ["inbox.1", "inbox.1"]


async def test_without_coalescing_every_event_is_its_own_write():
    transport = RecordingTransport()
    publisher = Publisher(transport, "p", start_seq=3)

    await publisher.emit("start", "")
    await publisher.emit("token", "a")
    await publisher.emit("token", "b")
    await publisher.end("metadata", {}, result={"text": "ab"})

    assert transport.shape() == [
        [(4, "start")],
        [(5, "token")],
        [(6, "token")],
        [(7, "metadata"), (8, "end")],
    ]
    assert transport.writes[-1][-1]["result"] == {"text": "ab"}


async def test_coalescing_never_holds_the_first_token_and_batches_the_next_ones():
    transport = RecordingTransport()
    publisher = Publisher(transport, "p", coalesce=60.0)  # nothing flushes by time here

    await publisher.emit("start", "")
    await publisher.emit("token", "a")
    await publisher.emit("token", "b")
    await publisher.emit("token", "c")
    written_before_end = transport.shape()
    await publisher.end("metadata", {})

    assert written_before_end == [[(1, "start")], [(2, "token")]]
    assert transport.shape()[-1] == [(3, "token"), (4, "token"), (5, "metadata"), (6, "end")]


async def test_held_tokens_are_written_once_the_window_passes():
    transport = RecordingTransport()
    publisher = Publisher(transport, "p", coalesce=0.05)

    await publisher.emit("token", "a")
    await publisher.emit("token", "b")
    await publisher.emit("token", "c")

    async def flushed() -> bool:
        return len(transport.writes) == 2

    await wait_until(flushed, within=5.0)
    assert transport.shape() == [[(1, "token")], [(2, "token"), (3, "token")]]


async def test_a_failed_delayed_write_fails_the_next_event():
    class FailingLater(RecordingTransport):
        async def publish_many(
            self, prediction_id: str, events: list[Event], reply_to: str | None = None
        ) -> None:
            if self.writes:
                raise ConnectionError("redis went away")
            await super().publish_many(prediction_id, events)

    transport = FailingLater()
    publisher = Publisher(transport, "p", coalesce=0.01)
    await publisher.emit("token", "a")
    await publisher.emit("token", "b")  # held, then its write fails in the background

    async def failed() -> bool:
        return publisher._flush_error is not None

    await wait_until(failed, within=5.0)
    with pytest.raises(ConnectionError, match="redis went away"):
        await publisher.end("metadata", {})


async def _sse_chunks(monkeypatch, delivered: list[Event | None]) -> list[bytes]:
    """What `_sse` writes when the relay yields `delivered` (None: a quiet spell)."""
    from predictions import relay
    from predictions.api import predict

    async def fake_read(prediction_id, *, after_seq, heartbeat):
        for event in delivered:
            yield event

    monkeypatch.setattr(relay, "aread_events", fake_read)
    return [chunk async for chunk in predict._sse("p", 0)]


async def test_sse_writes_the_events_of_one_live_message_together(monkeypatch):
    chunks = await _sse_chunks(
        monkeypatch,
        [
            Event(seq=1, event="start", data=""),
            Event(seq=2, event="token", data="a", more=True),
            Event(seq=3, event="token", data="b", more=True),
            Event(seq=4, event="token", data="c"),
            None,  # a quiet spell
            Event(seq=5, event="metadata", data={}, more=True),
            Event(seq=6, event="end", data="[DONE]"),
        ],
    )

    assert [chunk.count(b"\n\n") for chunk in chunks] == [1, 3, 1, 2]
    assert chunks[2] == SSE_HEARTBEAT
    assert b"more" not in b"".join(chunks)


async def test_sse_never_holds_a_frame_past_a_heartbeat(monkeypatch):
    chunks = await _sse_chunks(
        monkeypatch,
        [
            Event(seq=1, event="token", data="a", more=True),
            None,  # the rest of its message never came (e.g. Redis went away)
            Event(seq=2, event="end", data="[DONE]"),
        ],
    )

    assert len(chunks) == 2
    assert chunks[0].startswith(b"message:\ndata:")
    assert chunks[0].endswith(SSE_HEARTBEAT)
