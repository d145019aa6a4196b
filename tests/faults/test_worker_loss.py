"""A worker killed with SIGKILL mid-answer: its jobs are failed (worker_lost) or retried."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.conftest import offline_flow
from tests.faults.conftest import (
    ABANDONED_JOB_BOUND,
    Stack,
    ask,
    assert_no_duplicate_messages,
    attach,
    await_for,
    message_counts,
    names,
    predictions,
    stream,
    worker_name,
)

# Detection bound plus what the sweep itself and rq's whole-second scores add.
SLACK = 2.0


def _streaming(chat_id: str) -> bool:
    return int(chat_id[1:]) % 2 == 0


def _on_victim(stack: Stack, victim: str, count: int):
    def check():
        rows = predictions(stack)
        running = [r for r in rows.values() if r["status"] == "running"]
        if len(running) != count or any(r["worker_name"] != victim for r in running):
            return None
        # Mid-answer: streaming ones have sent tokens, the others have started.
        for row in running:
            events = stream(stack.redis_url, row["id"])
            if len(events) < (3 if _streaming(row["chat_id"]) else 1):
                return None
        return rows

    return check


def test_sigkill_with_20_in_flight_fails_them_worker_lost_within_the_bound(
    fault_stack: Stack, measure
):
    s = fault_stack
    # 200 tokens x 100 ms: 20 s answers, far longer than detection.
    chatflow_id = s.create_chatflow(offline_flow(tokens=200, delay_ms=100, memory=False))
    web = s.start_web()
    victim, victim_port = s.start_worker(WORKER_CONCURRENCY="20")
    victim_name = worker_name(victim_port)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            admission = asyncio.Semaphore(10)
            clients = [
                asyncio.create_task(
                    ask(
                        client,
                        web,
                        chatflow_id,
                        f"k{i}",
                        streaming=_streaming(f"x{i}"),
                        admission=admission,
                    )
                )
                for i in range(20)
            ]
            await await_for(_on_victim(s, victim_name, 20), 30, "20 predictions mid-answer")
            # A survivor, started only now so the victim holds all 20: it sweeps the dead one's.
            await asyncio.to_thread(s.start_worker)
            killed_at, killed_wall = time.monotonic(), time.time()
            os.killpg(victim.pid, signal.SIGKILL)
            outcomes = await asyncio.gather(*clients)
            return outcomes, killed_at, killed_wall

    outcomes, killed_at, killed_wall = asyncio.run(scenario())

    rows = predictions(s)
    assert len(rows) == 20
    detected = []
    for outcome in outcomes:
        row = rows[outcome.chat_id]
        assert (row["status"], row["error_code"]) == ("failed", "worker_lost"), row
        detected.append(row["finished_at"].timestamp() - killed_wall)
        events = names(stream(s.redis_url, row["id"]))
        assert events[0] == "start"
        assert events[-2:] == ["error", "end"]
        assert set(events[1:-2]) <= {"token"}
        if outcome.streaming:
            assert outcome.status == 200
            assert outcome.frames == stream(s.redis_url, row["id"])
        else:
            assert outcome.status == 502
            assert outcome.body["code"] == "worker_lost"
        # No client waited past the detection bound (the kill came after they all started).
        assert outcome.ended - killed_at < ABANDONED_JOB_BOUND + SLACK
    assert max(detected) < ABANDONED_JOB_BOUND + SLACK
    assert not message_counts(s)
    measure(
        "worker_lost",
        detected_min_s=round(min(detected), 2),
        detected_max_s=round(max(detected), 2),
        clients_max_wait_after_kill_s=round(max(o.ended - killed_at for o in outcomes), 2),
        bound_s=ABANDONED_JOB_BOUND,
    )


def test_sigkill_with_retries_reruns_on_another_worker_without_duplicate_tokens(
    fault_stack: Stack, measure
):
    s = fault_stack
    s.env_extra["JOB_MAX_ATTEMPTS"] = "2"
    # 60 tokens x 50 ms: 3 s answers.
    chatflow_id = s.create_chatflow(offline_flow(tokens=60, delay_ms=50, memory=False))
    expected = "".join(f"tok{i} " for i in range(60))
    web = s.start_web()
    victim, victim_port = s.start_worker(WORKER_CONCURRENCY="10")
    victim_name = worker_name(victim_port)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            clients = [
                asyncio.create_task(
                    ask(client, web, chatflow_id, f"r{i}", streaming=_streaming(f"x{i}"))
                )
                for i in range(10)
            ]
            await await_for(_on_victim(s, victim_name, 10), 30, "10 predictions mid-answer")
            killed_at = time.monotonic()
            os.killpg(victim.pid, signal.SIGKILL)
            # The survivor starts after the kill: its first sweep finds the dead one's jobs.
            await asyncio.to_thread(s.start_worker)
            outcomes = await asyncio.gather(*clients)
            late = await asyncio.gather(
                *(attach(client, web, r["id"]) for r in predictions(s).values())
            )
            return outcomes, late, killed_at

    outcomes, late, killed_at = asyncio.run(scenario())

    rows = predictions(s)
    by_id = {r["id"]: r for r in rows.values()}
    for outcome in outcomes:
        row = rows[outcome.chat_id]
        assert (row["status"], row["attempts"]) == ("succeeded", 2), row
        assert row["worker_name"] != victim_name
        assert outcome.status == 200
        if outcome.streaming:
            # The live client saw the first attempt's tokens, then the marker and a fresh start.
            events = outcome.events
            marker = events.index("retry")
            assert outcome.frames[marker]["data"] == {"attempt": 2}
            assert events[0] == "start"
            assert events[marker + 1] == "start"
            assert events[-2:] == ["metadata", "end"]
            after = outcome.frames[marker + 1 :]
            assert "".join(f["data"] for f in after if f["event"] == "token") == expected
        else:
            assert outcome.body["text"] == expected
    for reader in late:
        # A late reader replays only the last attempt: no duplicated tokens.
        assert reader.events[0] == "retry"
        assert reader.events[1] == "start"
        assert reader.events[-2:] == ["metadata", "end"]
        streaming = _streaming(by_id[reader.prediction_id]["chat_id"])
        assert reader.text == (expected if streaming else "")  # no tokens when not streaming
        assert reader.frames == stream(s.redis_url, reader.prediction_id)
        assert by_id[reader.prediction_id]["status"] == "succeeded"
    counts = message_counts(s)
    assert sorted(counts.values()) == [1] * 20
    assert_no_duplicate_messages(s)
    measure(
        "worker_lost_retried",
        predictions=len(rows),
        clients_max_wait_after_kill_s=round(max(o.ended - killed_at for o in outcomes), 2),
    )
