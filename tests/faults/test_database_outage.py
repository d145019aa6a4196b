"""PostgreSQL goes away for 5 s and comes back while predictions run (a private cluster: the
shared server on 5432 is never touched)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg

from tests.conftest import offline_flow
from tests.faults.conftest import (
    FAULT_ENV,
    PgCluster,
    Stack,
    ask,
    assert_answered_in_full,
    assert_no_duplicate_messages,
    await_for,
    message_counts,
    predictions,
    ready_status,
)

OUTAGE_SECONDS = 5.0
FAIL_FAST_BOUND = 3.0
CLIENT_BOUND = int(FAULT_ENV["PREDICTION_TIMEOUT"]) + int(FAULT_ENV["PREDICTION_TIMEOUT_MARGIN"])


def test_database_stopped_for_5_seconds(
    tmp_path: Path, redis_server: str, pg_cluster: PgCluster, measure
):
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "flowsite"')
    s = Stack(tmp=tmp_path, database_url=pg_cluster.url("flowsite"), redis_url=redis_server)
    s.env_extra.update(FAULT_ENV)
    (tmp_path / "home").mkdir()
    try:
        s.manage("migrate", "--noinput", "-v0")
        tokens = 20
        chatflow_id = s.create_chatflow(offline_flow(tokens=tokens, delay_ms=50))
        expected = "".join(f"tok{i} " for i in range(tokens))
        web = s.start_web()
        _, worker_port = s.start_worker(WORKER_CONCURRENCY="20")
        s.start_worker(WORKER_CONCURRENCY="20")
        worker_url = f"http://127.0.0.1:{worker_port}"

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                done: list[str] = []
                begin = time.monotonic()

                async def one(i: int):
                    await asyncio.sleep(max(0.0, begin + i * 0.1 - time.monotonic()))
                    outcome = await ask(client, web, chatflow_id, f"d{i:03}", streaming=i % 2 == 0)
                    done.append(outcome.chat_id)
                    return outcome

                clients = [asyncio.create_task(one(i)) for i in range(120)]
                await await_for(lambda: len(done) >= 20, 60, "20 predictions answered")
                stopped_at = time.monotonic()
                await asyncio.to_thread(pg_cluster.stop, "fast")
                await asyncio.sleep(0.5)
                ready_during = await asyncio.gather(
                    asyncio.to_thread(ready_status, web),
                    asyncio.to_thread(ready_status, worker_url),
                )
                # The outage itself: a deliberate 5 s without a database.
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
                await asyncio.to_thread(pg_cluster.start)
                restarted_at = time.monotonic()
                await await_for(lambda: ready_status(web) == 200, 15, "web ready again")
                await await_for(lambda: ready_status(worker_url) == 200, 15, "worker ready")
                outcomes = await asyncio.gather(*clients)
                return outcomes, ready_during, stopped_at, restarted_at

        outcomes, ready_during, stopped_at, restarted_at = asyncio.run(scenario())

        assert ready_during == [503, 503]
        rows = predictions(s)
        counts = message_counts(s)
        refused, answered = [], []
        for outcome in outcomes:
            assert outcome.transport_error is None, outcome
            assert outcome.elapsed < CLIENT_BOUND
            row = rows.get(outcome.chat_id)
            if outcome.status == 503:
                # Refused while the database was away: fast and clear; nothing half-written.
                refused.append(outcome)
                assert outcome.body["code"] == "database_unavailable"
                assert outcome.elapsed < FAIL_FAST_BOUND, outcome.elapsed
                assert stopped_at - 1 <= outcome.started <= restarted_at
                assert row is None or row["status"] != "succeeded"
                if row is not None:
                    assert counts[(row["id"], "apiMessage")] == 0
                continue
            answered.append(outcome)
            assert_answered_in_full(s, outcome, row, counts, expected)
        assert refused, "no request arrived during the outage"
        assert not [r for r in rows.values() if r["status"] in ("queued", "running")]
        # Recovered without restarting anything: later arrivals were answered.
        assert len([o for o in answered if o.started > restarted_at]) >= 20
        assert_no_duplicate_messages(s)
        waited_through = [o for o in answered if o.started < stopped_at < o.ended]
        measure(
            "database_outage",
            predictions=len(outcomes),
            answered=len(answered),
            refused_503=len(refused),
            refused_max_ms=round(max(o.elapsed for o in refused) * 1000),
            answered_across_outage=len(waited_through),
            client_max_wait_s=round(max(o.elapsed for o in outcomes), 2),
        )
    finally:
        s.stop()
