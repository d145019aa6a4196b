"""Event transports: publish a prediction's events and read them back, in-process or via Redis.

Both transports give readers the same guarantee: every event exactly once, in `seq` order,
ending with `end`. Queue mode writes each event to a capped Redis Stream (the record, replayed by
late or resuming readers) and pushes it live through Channels' Redis layer; a reader joins the
group first, replays the stream, then relays live events with `seq > last`, filling any gap
from the stream. The reader that asked for a prediction skips joining and replaying: its run
also pushes each live message to that web process's inbox (see `_Inbox`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from predictions import clients
from predictions.streaming import (
    CHANNEL_EVENT_TYPE,
    DONE,
    TERMINAL_EVENT,
    Event,
    decode_event,
    encode_event,
    group_name,
    stream_key,
)

logger = logging.getLogger(__name__)

# How long a finished prediction's in-process log stays readable (main mode).
LOCAL_RETENTION_SECONDS = 120.0
# Events that (re)set the stream's TTL besides the first: a run's start (a retry's too), its end.
_EXPIRY_EVENTS = frozenset({TERMINAL_EVENT, "retry", "start"})
# How long a publisher retries an event while Redis is unreachable before it gives up.
PUBLISH_RETRY_SECONDS = 30.0
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 1.0
# How long a reader waits for a live message before it looks in the stream for one it missed;
# each look that finds nothing doubles the wait, up to CATCH_UP_MAX_SECONDS, and a message sets
# it back. (Every second, each answer waiting in a long queue cost its web process a Redis read.)
CATCH_UP_SECONDS = 1.0
CATCH_UP_MAX_SECONDS = 8.0
# Errors that mean "Redis is not reachable right now" (socket errors, timeouts, refused).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
# Joining or leaving a group while the layer reconnects can also meet channels-redis' own receive
# task on the same connection ("RuntimeError: read() called while another coroutine is already
# waiting for incoming data"): as transient as the outage itself.
LAYER_DOWN = (*REDIS_DOWN, RuntimeError)

T = TypeVar("T")

# Publishers' delayed token writes, kept referenced until done.
_background: set[asyncio.Task[None]] = set()


async def aretry_redis(
    call: Callable[[], Awaitable[T]], *, what: str, seconds: float = PUBLISH_RETRY_SECONDS
) -> T:
    """Await `call()`, retrying while Redis is unreachable for up to `seconds`, then raise.

    For the worker's side of a prediction: a Redis restart then pauses a run instead of
    failing it. Request handlers should fail fast instead (503 queue_unavailable).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + seconds
    delay = RETRY_FIRST_DELAY
    warned = False
    while True:
        try:
            return await call()
        except REDIS_DOWN as exc:
            if loop.time() + delay > give_up_at:
                raise
            if not warned:
                logger.warning("Redis unreachable: %s waits for it (%s)", what, exc)
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)


class Transport(Protocol):
    async def publish(self, prediction_id: str, event: Event) -> None: ...

    async def publish_many(
        self, prediction_id: str, events: list[Event], reply_to: str | None = None
    ) -> None: ...

    async def reserve(self, prediction_id: str) -> str | None: ...

    def release(self, prediction_id: str) -> None: ...

    async def last_seq(self, prediction_id: str) -> int: ...

    def read(
        self,
        prediction_id: str,
        *,
        after_seq: int,
        heartbeat: float,
        deadline: float | None = None,
    ) -> AsyncIterator[Event | None]: ...

    async def exists(self, prediction_id: str) -> bool: ...

    async def restart(self, prediction_id: str) -> None: ...


def _quiet(heartbeat: float, deadline: float | None) -> float:
    """Return how long a reader waits for the next event: a heartbeat, or less near its deadline."""
    if deadline is None:
        return heartbeat
    return max(0.0, min(heartbeat, deadline - time.monotonic()))


class Publisher:
    """Number and send the events of one prediction run.

    With `coalesce` (seconds), tokens are written in batches, at most one write per `coalesce`:
    a token that comes `coalesce` or more after the last write of tokens goes at once (so the
    first token is never held); one that comes sooner waits, with those that follow it, until
    `coalesce` after that write (or until an event that is not a token comes). Every
    token is still its own event; only the writes (and live messages) are fewer.

    `reply_to`: the inbox of the web process that asked for the prediction (see `_Inbox`).
    """

    def __init__(
        self,
        transport: Transport,
        prediction_id: str,
        *,
        start_seq: int = 0,
        coalesce: float = 0.0,
        reply_to: str | None = None,
    ) -> None:
        self.transport = transport
        self.prediction_id = prediction_id
        self.reply_to = reply_to
        self.seq = start_seq
        self.ended = False
        self.coalesce = coalesce
        self._pending: list[Event] = []
        self._hold_until = float("-inf")  # no token is held before this (last write + coalesce)
        self._timer: asyncio.TimerHandle | None = None
        self._flush_error: BaseException | None = None
        self._lock = asyncio.Lock()

    async def emit(self, name: str, data: Any) -> None:
        if self.ended:
            return
        self.seq += 1
        if name == TERMINAL_EVENT:
            self.ended = True
        event = Event(seq=self.seq, event=name, data=data)
        if name == "token" and self.coalesce > 0:
            loop = asyncio.get_running_loop()
            if loop.time() < self._hold_until:
                self._pending.append(event)
                if self._timer is None:
                    self._timer = loop.call_at(self._hold_until, self._flush_later)
                return
        await self._send([event])

    async def _send(self, events: list[Event]) -> None:
        """Write what is pending, then `events`, in one call (in seq order, one at a time)."""
        async with self._lock:
            if self._flush_error is not None:
                raise self._flush_error
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._pending = [*self._pending, *events], []
            if not batch:
                return
            hold = self.coalesce > 0 and batch[-1]["event"] == "token"
            loop = asyncio.get_running_loop()
            if hold:
                self._hold_until = loop.time() + self.coalesce
            await self.transport.publish_many(self.prediction_id, batch, self.reply_to)
            if hold:
                # From the write's end: a run that waited on a slow write (a busy worker) has
                # its next tokens ready at once, and they should go together.
                self._hold_until = loop.time() + self.coalesce

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._flush())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _flush(self) -> None:
        try:
            await self._send([])
        except Exception as exc:  # raised again by the run's next event
            self._flush_error = exc

    async def end(self, name: str, data: Any, result: dict[str, Any] | None = None) -> None:
        """Emit one closing event (metadata, error, abort) and `end`, sent together; `result`
        (a success's stored result) rides on the live `end` (see `Event`)."""
        if self.ended:
            return
        self.ended = True
        self.seq += 2
        end = Event(seq=self.seq, event=TERMINAL_EVENT, data=DONE)
        if result is not None:
            end["result"] = result
        await self._send([Event(seq=self.seq - 1, event=name, data=data), end])


# --- main mode ---------------------------------------------------------------------------------


@dataclass
class _Log:
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None


class LocalTransport:
    """In-process event logs for main mode, on the web process's event loop."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self._logs: dict[str, _Log] = {}

    def _prune(self) -> None:
        now = time.monotonic()
        stale = [
            pid
            for pid, log in self._logs.items()
            if log.ended_at is not None and now - log.ended_at > LOCAL_RETENTION_SECONDS
        ]
        for pid in stale:
            del self._logs[pid]

    async def publish(self, prediction_id: str, event: Event) -> None:
        log = self._logs.get(prediction_id)
        if log is None:
            self._prune()
            log = self._logs[prediction_id] = _Log()
        log.events.append(event)
        if len(log.events) > self.max_len:
            del log.events[: len(log.events) - self.max_len]
        if event["event"] == TERMINAL_EVENT:
            log.ended_at = time.monotonic()
        changed, log.changed = log.changed, asyncio.Event()
        changed.set()

    async def publish_many(
        self, prediction_id: str, events: list[Event], reply_to: str | None = None
    ) -> None:
        for event in events:
            await self.publish(prediction_id, event)

    async def reserve(self, prediction_id: str) -> str | None:
        return None  # readers read the log itself

    def release(self, prediction_id: str) -> None:
        pass

    async def last_seq(self, prediction_id: str) -> int:
        log = self._logs.get(prediction_id)
        return log.events[-1]["seq"] if log and log.events else 0

    async def exists(self, prediction_id: str) -> bool:
        return prediction_id in self._logs

    async def restart(self, prediction_id: str) -> None:
        log = self._logs.get(prediction_id)
        if log is not None:
            log.events.clear()

    def ensure(self, prediction_id: str) -> None:
        """Create the log before the run starts, so readers wait instead of finding nothing."""
        self._logs.setdefault(prediction_id, _Log())

    async def read(
        self,
        prediction_id: str,
        *,
        after_seq: int,
        heartbeat: float,
        deadline: float | None = None,
    ) -> AsyncIterator[Event | None]:
        last = after_seq
        while True:
            log = self._logs.get(prediction_id)
            if log is None:
                return
            changed = log.changed
            if (
                log.events
                and log.events[-1]["event"] == TERMINAL_EVENT
                and log.events[-1]["seq"] <= last
            ):
                return  # the reader already has the end (a resume after the last frame)
            for event in log.events:
                if event["seq"] > last:
                    last = event["seq"]
                    yield event
                    if event["event"] == TERMINAL_EVENT:
                        return
            try:
                await asyncio.wait_for(changed.wait(), _quiet(heartbeat, deadline))
            except TimeoutError:
                yield None


# --- queue mode --------------------------------------------------------------------------------


class RedisTransport:
    """Capped Redis Stream per prediction plus live delivery through Channels' Redis layer."""

    def __init__(self, *, max_len: int, ttl: int) -> None:
        self.max_len = max_len
        self.ttl = ttl

    async def publish(self, prediction_id: str, event: Event) -> None:
        """Append the event to the stream and push it live, in one round trip.

        The live push is a PUBLISH to the Redis channel that Channels' pub/sub layer reads for
        the prediction's group, in the layer's own encoding: readers join and receive through
        the layer as usual, while the worker skips the layer's per-loop lock and a second round
        trip per token. While Redis is unreachable (a restart, a failover) the write is retried
        for up to PUBLISH_RETRY_SECONDS, so a short outage delays events instead of losing them.
        """
        await self.publish_many(prediction_id, [event])

    async def publish_many(
        self, prediction_id: str, events: list[Event], reply_to: str | None = None
    ) -> None:
        """Publish consecutive events in one round trip (see `publish`); the live message also
        goes to `reply_to`, the inbox of the web process that asked for the prediction."""
        await aretry_redis(
            lambda: self._write(prediction_id, events, reply_to),
            what=f"prediction {prediction_id} event {events[-1]['seq']}",
        )

    async def _write(self, prediction_id: str, events: list[Event], reply_to: str | None) -> None:
        key = stream_key(prediction_id)
        layer = get_channel_layer()
        channel = layer._get_group_channel_name(group_name(prediction_id))
        if len(events) == 1:
            live = {"type": CHANNEL_EVENT_TYPE, "p": prediction_id, **events[0]}
        else:  # one live message for the lot (readers unpack `events`)
            live = {
                "type": CHANNEL_EVENT_TYPE,
                "p": prediction_id,
                "seq": events[-1]["seq"],
                "events": events,
            }
        args: list[Any] = [
            self.max_len,
            self.ttl,
            # The TTL is set when the stream begins and renewed at its run's start and end.
            int(any(e["seq"] == 1 or e["event"] in _EXPIRY_EVENTS for e in events)),
            channel,
            reply_to or "",
            layer.serialize(live),
        ]
        for event in events:
            fields = encode_event(event)
            args += (f"0-{event['seq']}", fields["e"], fields["d"], fields.get("r", ""))
        try:
            await clients.get_command_pipe().run_script(_WRITE_SCRIPT, [key], args)
        except ResponseError:
            # A write whose connection broke is sent again (aretry_redis), and the first one
            # may have landed: the stream then refuses the same ids again (readers drop the
            # duplicate live messages by their seq).
            if await self.last_seq(prediction_id) < events[-1]["seq"]:
                raise
        if not reply_to:
            # Published here without the asker's inbox (a cancel, a timeout): if the asker reads
            # in this process, hand it over directly.
            _deliver_here(prediction_id, live)

    async def reserve(self, prediction_id: str) -> str | None:
        """Open a mailbox for `prediction_id`, about to be enqueued, on this loop's inbox and
        return the channel its run should also publish to (the job's `reply_to`); None when the
        layer cannot be reached now (the reader joins the group instead). The first `read` of
        the prediction here takes the mailbox; `release` drops one that will not be read.
        """
        try:
            inbox = await _inbox(get_channel_layer())
        except Exception as exc:  # Redis down, or refusing the subscription (an ACL, say)
            logger.warning("prediction %s: no inbox to answer on now (%r)", prediction_id, exc)
            return None
        inbox.open_mailbox(prediction_id)
        return inbox.channel

    def release(self, prediction_id: str) -> None:
        inbox = _inboxes.get(asyncio.get_running_loop())
        if inbox is not None:
            inbox.close_mailbox(prediction_id)

    async def last_seq(self, prediction_id: str) -> int:
        entries = await clients.get_async_redis().xrevrange(stream_key(prediction_id), count=1)
        return _seq_of_last(entries)

    async def begin(
        self, prediction_id: str, stop_key: str, first: Event, reply_to: str | None = None
    ) -> tuple[int, bool, bool]:
        """Where the stream stands and whether `stop_key` (a cancel marker) exists; when the
        stream is empty and the key is not there, also publish `first` (as `publish` would, with
        seq 1). One round trip (a script), at the start of every run. Returns the stream's last
        seq afterwards, whether the key exists and whether `first` went out.
        """
        layer = get_channel_layer()
        channel = layer._get_group_channel_name(group_name(prediction_id))
        fields = encode_event(first)
        live = layer.serialize({"type": CHANNEL_EVENT_TYPE, "p": prediction_id, **first})
        stopped, last_id, published = await clients.get_command_pipe().run_script(
            _BEGIN_SCRIPT,
            [stream_key(prediction_id), stop_key],
            [self.max_len, self.ttl, fields["e"], fields["d"], channel, live, reply_to or ""],
        )
        last_id = last_id.decode() if isinstance(last_id, bytes) else str(last_id)
        return int(last_id.split("-", 1)[1]), bool(stopped), bool(published)

    async def exists(self, prediction_id: str) -> bool:
        return bool(await clients.get_async_redis().exists(stream_key(prediction_id)))

    async def ended_by(self, prediction_id: str, seq: int) -> bool:
        """Return whether the stream's last event is an `end` at or before `seq`."""
        entries = await clients.get_async_redis().xrevrange(stream_key(prediction_id), count=1)
        if not entries:
            return False
        event = decode_event(*entries[0])
        return event["event"] == TERMINAL_EVENT and event["seq"] <= seq

    async def restart(self, prediction_id: str) -> None:
        """Drop an earlier attempt's events, so later readers replay only the new run."""
        last = await self.last_seq(prediction_id)
        await clients.get_async_redis().xtrim(stream_key(prediction_id), minid=f"0-{last + 1}")

    async def _replay(self, prediction_id: str, after_seq: int, until_seq: int | None = None):
        client = clients.get_async_redis()
        end = f"0-{until_seq}" if until_seq is not None else "+"
        entries = await client.xrange(stream_key(prediction_id), min=f"(0-{after_seq}", max=end)
        return [decode_event(entry_id, fields) for entry_id, fields in entries]

    async def read(
        self,
        prediction_id: str,
        *,
        after_seq: int,
        heartbeat: float,
        deadline: float | None = None,
    ) -> AsyncIterator[Event | None]:
        """Yield events after `after_seq` until `end`; None after each quiet `heartbeat`.

        With a `deadline` (monotonic time) a quiet period also ends then, so that the caller
        can give up on time.

        Survives Redis outages: joining is retried, replays that fail are retried at the next
        quiet period and live delivery resumes when the layer reconnects, so the reader resumes
        where it stopped (yielding None meanwhile); its caller's deadline bounds the wait.
        """
        layer = get_channel_layer()
        group = group_name(prediction_id)
        channel: str | None = None
        receiving: asyncio.Future[Any] | None = None
        last = after_seq
        inbox = _inboxes.get(asyncio.get_running_loop())
        # The asker's first read starts at 0; a resume (after_seq > 0) may already have the end,
        # which the mailbox's path does not look for: it joins the group.
        mailbox = inbox.take_mailbox(prediction_id) if inbox is not None and not after_seq else None
        try:
            # A mailbox is open since before the job was enqueued: every live message is in it.
            if mailbox is None:
                # A reader of an accepted prediction waits for Redis rather than fail (the
                # caller's deadline bounds it); a new one is refused up front by the API instead.
                while True:
                    try:
                        await _inbox(layer)  # keeps the layer's receiver listening
                        if channel is None:
                            channel = await layer.new_channel()
                        await layer.group_add(group, channel)
                        await _until_subscribed(layer._get_group_channel_name(group))
                        break
                    except LAYER_DOWN as exc:
                        logger.warning(
                            "prediction %s: cannot join its events now (%s)", prediction_id, exc
                        )
                        await asyncio.sleep(_quiet(min(heartbeat, RETRY_MAX_DELAY), deadline))
                        yield None
                joined = channel

                def receive() -> Awaitable[Any]:
                    return layer.receive(joined)

                # Joined first, so nothing published from here on is missed; the stream holds
                # the rest.
                replayed = await self._try_replay(prediction_id, last)
                for event in replayed or ():
                    if event["seq"] <= last:
                        continue
                    last = event["seq"]
                    yield event
                    if event["event"] == TERMINAL_EVENT:
                        return
                if (
                    replayed == []
                    and after_seq
                    and await self._try_ended_by(prediction_id, after_seq)
                ):
                    return  # the reader already has the end (a resume after the last frame)
            loop = asyncio.get_running_loop()
            beat_at = loop.time() + heartbeat
            catch_up = CATCH_UP_SECONDS
            while True:
                wait = _quiet(min(catch_up, max(0.0, beat_at - loop.time())), deadline)
                if mailbox is not None:
                    message = await mailbox.get(wait)
                else:
                    # One receive stays pending across quiet periods: cancelling it would make
                    # the layer unsubscribe the channel, and what arrived meanwhile would be lost.
                    if receiving is None:
                        receiving = asyncio.ensure_future(receive())
                    done, _ = await asyncio.wait({receiving}, timeout=wait)
                    message = receiving.result() if done else None
                    if done:
                        receiving = None
                if message is None:
                    # Quiet: catch up from the stream in case a live message was lost (the gap
                    # check below only sees a loss once a later message comes, never the last).
                    caught_up = await self._try_replay(prediction_id, last) or ()
                    catch_up = (
                        CATCH_UP_SECONDS if caught_up else min(catch_up * 2, CATCH_UP_MAX_SECONDS)
                    )
                    if caught_up:
                        logger.info(
                            "prediction %s: %d event(s) after %d read from the stream, not live",
                            prediction_id,
                            len(caught_up),
                            last,
                        )
                    for event in caught_up:
                        last = event["seq"]
                        yield event
                        if event["event"] == TERMINAL_EVENT:
                            return
                    if caught_up:
                        beat_at = loop.time() + heartbeat
                    if loop.time() >= beat_at or (
                        deadline is not None and time.monotonic() >= deadline
                    ):
                        beat_at = loop.time() + heartbeat
                        yield None
                    continue
                beat_at = loop.time() + heartbeat
                catch_up = CATCH_UP_SECONDS
                if message.get("type") != CHANNEL_EVENT_TYPE:
                    continue
                for event in _live_events(message):
                    seq = event["seq"]
                    if seq <= last:
                        continue
                    if seq > last + 1:
                        gap = await self._try_replay(prediction_id, last, seq - 1)
                        if gap is None:
                            break  # Redis is away: the next quiet period replays all of it
                        for missed in gap:
                            last = missed["seq"]
                            yield missed
                    last = seq
                    yield event
                    if event["event"] == TERMINAL_EVENT:
                        return
        finally:
            if mailbox is not None:
                if inbox is not None:
                    inbox.close_mailbox(prediction_id)
            else:
                await asyncio.shield(_leave(layer, group, channel, receiving))

    async def _try_ended_by(self, prediction_id: str, seq: int) -> bool:
        try:
            return await self.ended_by(prediction_id, seq)
        except REDIS_DOWN:
            return False

    async def _try_replay(
        self, prediction_id: str, after_seq: int, until_seq: int | None = None
    ) -> list[Event] | None:
        """Replay like `_replay`, or return None while Redis is unreachable."""
        try:
            return await self._replay(prediction_id, after_seq, until_seq)
        except REDIS_DOWN as exc:
            logger.warning("prediction %s: cannot replay events now (%s)", prediction_id, exc)
            return None


# KEYS: the stream, the stop key. ARGV: max length, TTL, the first event's name and data, the
# group's channel, the live message, the asker's inbox (or ""). Returns {stopped, the stream's
# last entry id, published}.
_BEGIN_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = last[1] and last[1][1] or '0-0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, last_id, 0}
end
if last[1] then
  return {0, last_id, 0}
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-1', 'e', ARGV[3], 'd', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], ARGV[6])
end
return {0, '0-1', 1}
"""


# KEYS: the stream. ARGV: max length, TTL, whether to (re)set the TTL, the group's channel, the
# asker's inbox (or ""), the live message, then four per event: its entry id, name, data and
# result (or ""). One command where a pipeline took one per entry, TTL and channel: redis-py's
# client spends more per command (packing, a timeout and a parse per reply) than Redis does.
_WRITE_SCRIPT = """
for i = 7, #ARGV, 4 do
  if ARGV[i + 3] == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i], 'e', ARGV[i + 1], 'd', ARGV[i + 2])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i], 'e', ARGV[i + 1], 'd', ARGV[i + 2],
      'r', ARGV[i + 3])
  end
end
if ARGV[3] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('PUBLISH', ARGV[4], ARGV[6])
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return 1
"""


def _seq_of_last(entries: list[Any]) -> int:
    """The seq of a stream's last entry (an XREVRANGE COUNT 1 reply), 0 when it is empty."""
    return decode_event(*entries[0])["seq"] if entries else 0


def _live_events(message: dict[str, Any]) -> list[Event]:
    """The events of a live message: one, or a batch under `events` (Publisher.coalesce)."""
    items = message.get("events", [message])
    events = []
    for item in items:
        event = Event(seq=int(item["seq"]), event=item["event"], data=item["data"])
        if "result" in item:
            event["result"] = item["result"]
        events.append(event)
    for event in events[:-1]:
        event["more"] = True
    return events


# How long a reader waits for Redis to have its subscription (normally at the first check).
SUBSCRIBE_CHECKS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256)


async def _until_subscribed(channel: str) -> None:
    """Return once Redis has a subscriber for `channel` (or after about half a second).

    The layer sends SUBSCRIBE on its own connection and returns at once, and Redis may run the
    reader's replay, sent after it on another connection, first: an event published between
    the two reached the reader neither way (in the bench, the last message of about one
    streaming prediction in 3,000, caught up only by the quiet reader's look at the stream).
    """
    redis = clients.get_async_redis()
    for delay in SUBSCRIBE_CHECKS:
        await asyncio.sleep(delay)
        [(_, subscribers)] = await redis.pubsub_numsub(channel)
        if subscribers:
            return


# How long a mailbox waits for its reader before it is dropped (a streaming response that was
# never read: its client left before the first byte).
MAILBOX_UNREAD_SECONDS = 60.0
# The prefix of an inbox's channel name (after the layer's own).
INBOX_PREFIX = "inbox."
# An inbox whose receive fails this many times in a row is closed (see _Inbox._deliver), with
# a pause growing by this much after each failure.
INBOX_FAILURES_BEFORE_CLOSING = 5
INBOX_RETRY_SECONDS = 0.05


class _Mailbox:
    """The live messages of one prediction that its asker reads here, in order.

    `get` waits on one future and one timer (an asyncio.Queue read with a timeout took a task,
    `asyncio.wait` and its callbacks per message: a tenth of a web process's CPU, streaming).
    """

    def __init__(self) -> None:
        self._messages: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: dict[str, Any]) -> None:
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, within: float) -> dict[str, Any] | None:
        """The next message; None if none came `within` seconds."""
        if not self._messages:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(within, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._messages:
                return None
        return self._messages.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """One channel of this loop's layer, subscribed for good, with a mailbox per prediction that
    this process asked for and reads.

    Such a prediction's job carries the channel (`reply_to`), and its run publishes each live
    message to it as well as to the prediction's group: the mailbox is open before the job is
    enqueued, so its reader joins no group, replays no stream and leaves no group (six Redis
    commands and two subscriptions per prediction). Other readers (a resume, a second tab, a
    web process that did not ask) join the group as before. Being subscribed, the channel also
    keeps channels-redis' receiver listening: it polls every 100 ms while its connection
    subscribes to nothing, so a reader joining after every other had left waited up to 100 ms.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel = ""
        self.opened: asyncio.Future[None] | None = None
        self._mailboxes: dict[str, _Mailbox] = {}
        self._opened_at: dict[str, float] = {}  # of the mailboxes no reader took yet
        self._sweep: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        loop_layer = _loop_layer(self.layer)
        known = set(getattr(loop_layer, "channels", ()))
        try:
            self.channel = await self.layer.new_channel(INBOX_PREFIX)
            await _until_subscribed(self.channel)
        except BaseException:
            await _forget_new_inboxes(loop_layer, known)
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._deliver(_loop_receive(self.layer))
        )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sweep is not None:
            self._sweep.cancel()

    def open_mailbox(self, prediction_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._mailboxes[prediction_id] = _Mailbox()
        self._opened_at[prediction_id] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_later(MAILBOX_UNREAD_SECONDS, self._drop_unread)

    def take_mailbox(self, prediction_id: str) -> _Mailbox | None:
        """The mailbox, for the prediction's first reader here; None for the others."""
        if self._opened_at.pop(prediction_id, None) is None:
            return None  # none, or taken
        return self._mailboxes[prediction_id]

    def close_mailbox(self, prediction_id: str) -> None:
        self._mailboxes.pop(prediction_id, None)
        self._opened_at.pop(prediction_id, None)

    def put(self, message: dict[str, Any]) -> None:
        mailbox = self._mailboxes.get(message.get("p", ""))
        if mailbox is not None:
            mailbox.put(message)

    def _drop_unread(self) -> None:
        """Drop the mailboxes nobody took within MAILBOX_UNREAD_SECONDS (every so often)."""
        loop = asyncio.get_running_loop()
        self._sweep = None
        too_old = loop.time() - MAILBOX_UNREAD_SECONDS
        for prediction_id in [p for p, at in self._opened_at.items() if at <= too_old]:
            self.close_mailbox(prediction_id)
        if self._opened_at:
            self._sweep = loop.call_later(MAILBOX_UNREAD_SECONDS, self._drop_unread)

    async def _deliver(self, receive: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        failures = 0
        while True:
            try:
                message = await receive(self.channel)
            except Exception:
                failures += 1
                if failures >= INBOX_FAILURES_BEFORE_CLOSING:
                    # Not one bad message but a receive that keeps failing (its layer or loop
                    # broken): it would fail, and log, without end. Its readers catch up from
                    # the streams; the next one opens another inbox.
                    logger.exception(
                        "inbox %s: receiving failed %d times in a row; closed",
                        self.channel,
                        failures,
                    )
                    self._forget()
                    return
                # A message it cannot decode: dropped, the stream has its events.
                logger.exception("inbox %s: unreadable message", self.channel)
                await asyncio.sleep(INBOX_RETRY_SECONDS * failures)
                continue
            failures = 0
            self.put(message)

    def _forget(self) -> None:
        """Leave this loop's inbox place to a new one, and stop the sweep."""
        for loop, inbox in list(_inboxes.items()):
            if inbox is self:
                del _inboxes[loop]
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None


def _loop_layer(layer: Any) -> Any:
    """This loop's layer, where channels-redis keeps one per loop (else `layer` itself)."""
    get_layer = getattr(layer, "_get_layer", None)
    return get_layer() if get_layer is not None else layer


def _loop_receive(layer: Any) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """`layer.receive`, bound to this loop's layer: channels-redis' proxy looks the loop's
    layer up on every call (2-3 % of a web process's CPU, streaming)."""
    return _loop_layer(layer).receive


async def _forget_new_inboxes(loop_layer: Any, known: set[str]) -> None:
    """Drop the inbox channels the layer took on since `known`, for an inbox that did not open.

    channels-redis keeps a channel from `new_channel` on even when its SUBSCRIBE failed, and
    only a cancelled `receive` lets go of one: without this, every request while Redis refuses
    subscriptions (down, an ACL) left a channel behind for the life of the process.
    """
    channels = getattr(loop_layer, "channels", None)
    if channels is None:
        return
    for name in [c for c in channels if c not in known and INBOX_PREFIX in c]:
        del channels[name]
        try:  # SUBSCRIBE may have gone through (the failure came after it); a no-op if not
            await loop_layer._get_shard(name).unsubscribe(name)
        except Exception as exc:  # Redis still down: its messages go nowhere now
            logger.debug("inbox %s: not unsubscribed (%r)", name, exc)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


async def _inbox(layer: Any) -> _Inbox:
    """This loop's inbox on `layer`, opened (subscribed in Redis) on first use."""
    loop = asyncio.get_running_loop()
    inbox = _inboxes.get(loop)
    if inbox is None or inbox.layer is not layer:
        if inbox is not None:
            inbox.close()
        # An inbox's task holds its loop, so a closed loop's entry never leaves the weak
        # dictionary by itself (short-lived loops: async_to_sync, tests).
        for closed in [other for other in _inboxes if other.is_closed()]:
            del _inboxes[closed]
        inbox = _inboxes[loop] = _Inbox(layer)
        inbox.opened = asyncio.ensure_future(inbox.open())
    assert inbox.opened is not None
    try:
        await asyncio.shield(inbox.opened)
    except Exception:
        if _inboxes.get(loop) is inbox:
            del _inboxes[loop]  # the next reader tries again
            inbox.close()
        raise
    return inbox


def _deliver_here(prediction_id: str, live: dict[str, Any]) -> None:
    """Put a live message into this loop's mailbox for `prediction_id`, if there is one."""
    try:
        inbox = _inboxes.get(asyncio.get_running_loop())
    except RuntimeError:
        return
    if inbox is not None:
        inbox.put(live)


async def _leave(
    layer: Any, group: str, channel: str | None, receiving: asyncio.Future[Any] | None
) -> None:
    if channel is None:
        return
    # channels-redis forgets a channel (its queue and its Redis subscription) only when a receive
    # on it is cancelled (django/channels_redis#276): a reader that took its last message has
    # none pending, so one is started to be cancelled. Without it every reader leaked both.
    if receiving is None or receiving.done():
        receiving = await _pending_receive(layer, channel)
    receiving.cancel()
    await asyncio.wait({receiving})
    await _discard(layer, group, channel)


async def _pending_receive(layer: Any, channel: str) -> asyncio.Future[Any]:
    """Start a receive on `channel` and return it once it waits for a message."""
    while True:
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # the receive runs up to its wait without awaiting anything else
        if not receiving.done():
            return receiving
        # It took a message that was already queued, which the reader no longer wants.


async def _discard(layer: Any, group: str, channel: str) -> None:
    try:
        await layer.group_discard(group, channel)
    except LAYER_DOWN as exc:
        logger.warning("could not leave group %s: %s", group, exc)


_transport: Transport | None = None


def get_transport() -> Transport:
    """Return this process's transport (in-process in main mode, Redis in queue mode)."""
    global _transport
    if _transport is None:
        if settings.MODE == "queue":
            _transport = RedisTransport(
                max_len=settings.QUEUE_REDIS_EVENT_STREAM_MAX_LEN, ttl=settings.EVENT_STREAM_TTL
            )
        else:
            _transport = LocalTransport(max_len=settings.QUEUE_REDIS_EVENT_STREAM_MAX_LEN)
    return _transport


def reset_transport() -> None:
    """Forget the transport (tests switch MODE)."""
    global _transport
    _transport = None
