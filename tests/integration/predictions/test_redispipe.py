"""CommandPipe on a real Redis: replies in order, one write for what is queued together, errors."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, DataError, ResponseError, TimeoutError

from predictions import clients
from predictions.redispipe import CommandPipe, connection_like

pytestmark = pytest.mark.integration

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _count_writes(pipe) -> list[int]:
    """Count the pipe's writes to Redis (one list entry per write: how many commands it held)."""
    writes: list[int] = []
    send = pipe.connection.send_packed_command

    async def counting(command, *args, **kwargs):
        data = command if isinstance(command, bytes) else b"".join(command)
        writes.append(data.count(b"\r\n*") + 1)
        return await send(command, *args, **kwargs)

    pipe.connection.send_packed_command = counting
    return writes


async def test_commands_queued_together_go_in_one_write_and_get_their_own_replies(redis_db):
    pipe = clients.get_command_pipe()
    await pipe.execute("PING")  # connects
    writes = _count_writes(pipe)

    replies = await asyncio.gather(
        *(pipe.execute("INCRBY", "flowsite-test-n", i) for i in range(1, 201))
    )

    assert replies == [i * (i + 1) // 2 for i in range(1, 201)]  # in the order queued
    assert writes == [200]


async def test_an_error_reply_fails_its_own_command_only(redis_db):
    pipe = clients.get_command_pipe()
    await pipe.execute("SET", "flowsite-test-text", "abc")

    results = await asyncio.gather(
        pipe.execute("INCR", "flowsite-test-n"),
        pipe.execute("INCR", "flowsite-test-text"),
        pipe.execute("INCR", "flowsite-test-n"),
        return_exceptions=True,
    )

    assert results[0] == 1
    assert results[2] == 2
    assert isinstance(results[1], ResponseError)
    assert "not an integer" in str(results[1])


async def test_an_argument_redis_cannot_take_fails_its_own_command_at_once(redis_db):
    pipe = clients.get_command_pipe()
    fine = pipe.execute("INCR", "flowsite-test-n")

    with pytest.raises(DataError, match="SET"):
        pipe.execute("SET", "flowsite-test-text", None)

    assert await fine == 1
    assert redis_db.get("flowsite-test-text") is None


async def test_a_script_runs_again_after_redis_forgot_it(redis_db):
    pipe = clients.get_command_pipe()
    assert await pipe.run_script(SCRIPT, ["flowsite-test-n"], [2]) == 2

    await pipe.execute("SCRIPT", "FLUSH")  # as a Redis restart does

    assert await pipe.run_script(SCRIPT, ["flowsite-test-n"], [3]) == 5


async def test_a_dropped_connection_fails_what_was_waiting_and_the_next_command_reconnects(
    redis_db,
):
    pipe = clients.get_command_pipe()
    my_id = await pipe.execute("CLIENT", "ID")
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", "flowsite-test-list", 10))
    behind = asyncio.ensure_future(pipe.execute("PING"))
    await asyncio.sleep(0.05)  # both sent; Redis holds the BLPOP

    redis_db.client_kill_filter(_id=my_id)

    for waiting in (blocked, behind):
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 5)
    assert await pipe.execute("CLIENT", "ID") != my_id
    assert await pipe.execute("INCR", "flowsite-test-n") == 1


async def test_a_reply_later_than_the_socket_timeout_fails_with_a_timeout(redis_db, settings):
    settings.REDIS = dataclasses.replace(settings.REDIS, socket_timeout=0.2)
    clients.reset_clients()
    pipe = clients.get_command_pipe()

    with pytest.raises(TimeoutError):
        await pipe.execute("BLPOP", "flowsite-test-list", 2)

    assert await pipe.execute("PING") == b"PONG"


async def test_a_cancelled_caller_leaves_its_command_in_order(redis_db):
    pipe = clients.get_command_pipe()
    first = asyncio.ensure_future(pipe.execute("RPUSH", "flowsite-test-list", "a"))
    second = asyncio.ensure_future(pipe.execute("RPUSH", "flowsite-test-list", "b"))
    await asyncio.sleep(0)  # both queued
    first.cancel()

    assert await second == 2
    assert redis_db.lrange("flowsite-test-list", 0, -1) == [b"a", b"b"]


async def test_a_transaction_returns_its_replies_and_raises_the_first_error_in_it(redis_db):
    pipe = clients.get_command_pipe()

    replies = await pipe.transaction(
        [("INCR", "flowsite-test-n"), ("INCRBY", "flowsite-test-n", 5)]
    )
    assert replies == [1, 6]

    with pytest.raises(ResponseError, match="not an integer"):
        await pipe.transaction(
            [("SET", "flowsite-test-text", "abc"), ("INCR", "flowsite-test-text")]
        )
    assert redis_db.get("flowsite-test-text") == b"abc"  # as in Redis: the rest was committed


async def test_a_connection_like_a_sync_clients_reaches_its_database(redis_db, settings):
    sync_client = redis.Redis.from_url(settings.REDIS.url, **settings.REDIS.client_kwargs())
    pipe = CommandPipe(connection_like(sync_client, Retry(NoBackoff(), 0)))

    await pipe.execute("SET", "flowsite-test-text", "from the pipe")

    assert redis_db.get("flowsite-test-text") == b"from the pipe"
    assert pipe.connection.socket_timeout == settings.REDIS.socket_timeout


def test_the_pipe_of_a_closed_loop_is_dropped_when_another_loop_needs_one(redis_db):
    async def write() -> None:
        await clients.get_command_pipe().execute("INCR", "flowsite-test-n")

    for _ in range(3):  # as async_to_sync does: a new loop each time, closed after
        asyncio.run(write())

    assert redis_db.get("flowsite-test-n") == b"3"
    assert len(clients._pipes) == 1  # the last loop's
