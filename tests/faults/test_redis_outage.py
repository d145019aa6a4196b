"""Redis goes away and comes back (restart with AOF persistence) while predictions run."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import offline_flow
from tests.faults.conftest import (
    FAULT_ENV,
    RedisServer,
    Stack,
    ask,
    assert_answered_in_full,
    assert_no_duplicate_messages,
    attach,
    await_for,
    message_counts,
    predictions,
    ready_status,
)

OUTAGE_SECONDS = 2.0
# A request that arrives while Redis is away must be refused within this many seconds.
FAIL_FAST_BOUND = 3.0
CLIENT_BOUND = int(FAULT_ENV["PREDICTION_TIMEOUT"]) + int(FAULT_ENV["PREDICTION_TIMEOUT_MARGIN"])


def test_redis_restart_during_200_predictions(fault_stack: Stack, redis_proc: RedisServer, measure):
    s = fault_stack
    tokens = 20
    chatflow_id = s.create_chatflow(offline_flow(tokens=tokens, delay_ms=50, memory=False))
    expected = "".join(f"tok{i} " for i in range(tokens))
    web = s.start_web()
    # 20 slots for 30 arrivals a second at first: a backlog waits in Redis when it stops.
    _, worker_port = s.start_worker(WORKER_CONCURRENCY="10")
    s.start_worker(WORKER_CONCURRENCY="10")
    worker_url = f"http://127.0.0.1:{worker_port}"

    async def scenario():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            done: list[str] = []
            begin = time.monotonic()

            async def one(i: int):
                # Arrivals whatever the answers, as independent clients come: 30/s for 4 s (a
                # backlog builds up), then 10/s.
                at = i / 30 if i < 120 else 4 + (i - 120) / 10
                await asyncio.sleep(max(0.0, begin + at - time.monotonic()))
                outcome = await ask(client, web, chatflow_id, f"p{i:03}", streaming=i % 2 == 0)
                done.append(outcome.chat_id)
                return outcome

            clients = [asyncio.create_task(one(i)) for i in range(200)]
            await await_for(lambda: len(done) >= 50, 60, "50 predictions answered")
            # Redis stops (a clean shutdown, as a service restart does) with ~20 running and a
            # backlog queued.
            at_stop = predictions(s).values()
            in_flight = {r["chat_id"] for r in at_stop if r["status"] == "running"}
            queued = {r["chat_id"] for r in at_stop if r["status"] == "queued"}
            stopped_at = time.monotonic()
            await asyncio.to_thread(redis_proc.stop)
            await asyncio.sleep(0.5)
            ready_during = await asyncio.gather(
                asyncio.to_thread(ready_status, web), asyncio.to_thread(ready_status, worker_url)
            )
            # Attaching to a prediction's events is refused at once too, not a broken stream.
            attached = await attach(client, web, next(iter(at_stop))["id"])
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
            await asyncio.to_thread(redis_proc.start)
            restarted_at = time.monotonic()
            await await_for(lambda: ready_status(web) == 200, 15, "web ready again")
            web_ready_after = time.monotonic() - restarted_at
            await await_for(lambda: ready_status(worker_url) == 200, 15, "worker ready again")
            outcomes = await asyncio.gather(*clients)
            return (
                outcomes,
                in_flight,
                queued,
                {
                    "ready_during": ready_during,
                    "attached": attached,
                    "web_ready_after": web_ready_after,
                    "stopped_at": stopped_at,
                    "restarted_at": restarted_at,
                },
            )

    outcomes, in_flight, queued, seen = asyncio.run(scenario())
    stopped_at, restarted_at = seen["stopped_at"], seen["restarted_at"]

    assert seen["ready_during"] == [503, 503]
    assert seen["attached"].status == 503
    assert seen["attached"].elapsed < FAIL_FAST_BOUND
    rows = predictions(s)
    counts = message_counts(s)
    refused, answered = [], []
    for outcome in outcomes:
        assert outcome.transport_error is None, outcome
        assert outcome.elapsed < CLIENT_BOUND
        row = rows.get(outcome.chat_id)
        if outcome.status == 503:
            # Refused while Redis was away: fast, clear, and never run.
            refused.append(outcome)
            assert outcome.body["code"] == "queue_unavailable"
            assert outcome.elapsed < FAIL_FAST_BOUND, outcome.elapsed
            assert stopped_at - 1 <= outcome.started <= restarted_at
            if row is not None:
                assert (row["status"], row["error_code"]) == ("failed", "queue_unavailable")
                assert counts[(row["id"], "apiMessage")] == 0
            continue
        # Accepted: never lost, answered in full, exactly once.
        answered.append(outcome)
        events = assert_answered_in_full(s, outcome, row, counts, expected)
        assert events.count("end") == 1
    assert not [r for r in rows.values() if r["status"] in ("queued", "running")]
    assert in_flight <= {o.chat_id for o in answered}  # readers that were waiting resumed
    assert len(queued) >= 5
    assert queued <= {o.chat_id for o in answered}  # jobs waiting in Redis were not lost
    # Work resumed without restarting anything: later arrivals were answered.
    assert len([o for o in answered if o.started > restarted_at]) >= 30
    assert_no_duplicate_messages(s)
    measure(
        "redis_restart",
        predictions=len(outcomes),
        answered=len(answered),
        refused_503=len(refused),
        refused_max_ms=round(max((o.elapsed for o in refused), default=0) * 1000),
        in_flight_at_stop=len(in_flight),
        queued_at_stop=len(queued),
        web_ready_after_restart_s=round(seen["web_ready_after"], 2),
        client_max_wait_s=round(max(o.elapsed for o in outcomes), 2),
    )
