"""Graceful stops: SIGTERM drains a worker then requeues, a second signal exits at once, and a web
process that stops closes its SSE streams so clients resume on another one."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.conftest import offline_flow
from tests.faults.conftest import (
    Stack,
    ask,
    assert_no_duplicate_messages,
    attach,
    await_for,
    message_counts,
    predictions,
    stream,
    worker_name,
)

SHUTDOWN_TIMEOUT = 3  # WORKER_SHUTDOWN_TIMEOUT of the fault stack


def _tokens(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def _running_on(stack: Stack, name: str, count: int):
    def check():
        rows = predictions(stack)
        running = [r for r in rows.values() if r["status"] == "running"]
        on_it = len(running) == count and all(r["worker_name"] == name for r in running)
        if on_it and all(stream(stack.redis_url, r["id"]) for r in running):  # all started
            return rows
        return None

    return check


def _wait_exit(process, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = process.wait(timeout)
    return code, time.monotonic() - started


def test_sigterm_finishes_short_answers_and_requeues_long_ones(fault_stack: Stack, measure):
    s = fault_stack
    short_flow = s.create_chatflow(offline_flow(tokens=15, delay_ms=100, memory=False))  # 1.5 s
    long_flow = s.create_chatflow(offline_flow(tokens=60, delay_ms=100, memory=False))  # 6 s
    web = s.start_web()
    draining, port = s.start_worker(WORKER_CONCURRENCY="10")
    draining_name = worker_name(port)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            clients = [
                asyncio.create_task(
                    ask(
                        client,
                        web,
                        short_flow if i < 5 else long_flow,
                        f"{'short' if i < 5 else 'long'}-{i}",
                        streaming=i % 2 == 0,
                    )
                )
                for i in range(10)
            ]
            await await_for(_running_on(s, draining_name, 10), 30, "10 predictions mid-answer")
            draining.send_signal(signal.SIGTERM)
            exiting = asyncio.create_task(
                asyncio.to_thread(_wait_exit, draining, SHUTDOWN_TIMEOUT + 10)
            )
            # The one that takes over starts while the first drains (it claims nothing more).
            await asyncio.to_thread(s.start_worker)
            exit_code, took = await exiting
            return await asyncio.gather(*clients), exit_code, took

    outcomes, exit_code, took = asyncio.run(scenario())

    assert exit_code == 0
    assert took < SHUTDOWN_TIMEOUT + 2, f"the worker took {took:.1f} s to stop"
    rows = predictions(s)
    for outcome in outcomes:
        row = rows[outcome.chat_id]
        short = outcome.chat_id.startswith("short")
        expected = _tokens(15 if short else 60)
        assert row["status"] == "succeeded", row
        assert outcome.status == 200
        if short:  # finished on the draining worker within WORKER_SHUTDOWN_TIMEOUT
            assert (row["worker_name"], row["attempts"]) == (draining_name, 1)
        else:  # requeued, then run again by the other worker
            assert row["worker_name"] != draining_name
            assert row["attempts"] == 2
        if outcome.streaming:
            assert outcome.events[-2:] == ["metadata", "end"]
            last_start = len(outcome.events) - 1 - outcome.events[::-1].index("start")
            tail = outcome.frames[last_start:]
            assert "".join(f["data"] for f in tail if f["event"] == "token") == expected
            assert outcome.events.count("retry") == (0 if short else 1)
        else:
            assert outcome.body["text"] == expected
    assert sorted(message_counts(s).values()) == [1] * 20
    assert_no_duplicate_messages(s)
    measure("sigterm_drain", worker_stopped_after_s=round(took, 2), requeued=5, finished=5)


def test_second_sigterm_exits_at_once_and_requeues(fault_stack: Stack, measure):
    s = fault_stack
    s.env_extra["WORKER_SHUTDOWN_TIMEOUT"] = "30"
    chatflow_id = s.create_chatflow(offline_flow(tokens=30, delay_ms=100, memory=False))
    web = s.start_web()
    stopping, port = s.start_worker(WORKER_CONCURRENCY="5")
    stopping_name = worker_name(port)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            clients = [
                asyncio.create_task(ask(client, web, chatflow_id, f"twice-{i}", streaming=True))
                for i in range(5)
            ]
            await await_for(_running_on(s, stopping_name, 5), 30, "5 predictions mid-answer")
            stopping.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            stopping.send_signal(signal.SIGTERM)
            exit_code, took = await asyncio.to_thread(_wait_exit, stopping, 15)
            await asyncio.to_thread(s.start_worker)
            return await asyncio.gather(*clients), exit_code, took

    outcomes, exit_code, took = asyncio.run(scenario())

    assert exit_code == 0
    assert took < 3, f"the second SIGTERM took {took:.1f} s to stop the worker"
    rows = predictions(s)
    for outcome in outcomes:
        row = rows[outcome.chat_id]
        assert (row["status"], row["attempts"]) == ("succeeded", 2)
        assert row["worker_name"] != stopping_name
        assert outcome.events[-2:] == ["metadata", "end"]
        assert outcome.events.count("retry") == 1
    assert sorted(message_counts(s).values()) == [1] * 10
    measure("second_sigterm", worker_stopped_after_s=round(took, 2))


def test_web_shutdown_closes_streams_and_clients_resume_on_another(fault_stack: Stack, measure):
    s = fault_stack
    chatflow_id = s.create_chatflow(offline_flow(tokens=40, delay_ms=100, memory=False))
    leaving = s.start_web()
    leaving_process = s.processes[-1]
    staying = s.start_web()
    s.start_worker()

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            first = [
                asyncio.create_task(ask(client, leaving, chatflow_id, f"sse-{i}", streaming=True))
                for i in range(5)
            ]

            def mid_answer():
                rows = predictions(s)
                if len(rows) == 5 and all(
                    len(stream(s.redis_url, r["id"])) >= 5 for r in rows.values()
                ):
                    return rows
                return None

            await await_for(mid_answer, 30, "5 streams mid-answer")
            leaving_process.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            cut = await asyncio.gather(*first)
            closed_after = max(o.ended for o in cut) - stopped_at
            exit_code, took = await asyncio.to_thread(_wait_exit, leaving_process, 15)
            resumed = await asyncio.gather(
                *(
                    attach(
                        client,
                        staying,
                        o.prediction_id,
                        after_seq=o.frames[-1]["seq"],
                        chat_id=o.chat_id,
                    )
                    for o in cut
                )
            )
            return cut, resumed, closed_after, exit_code, took

    cut, resumed, closed_after, exit_code, took = asyncio.run(scenario())

    assert closed_after < 5, f"streams stayed open {closed_after:.1f} s after SIGTERM"
    rows = predictions(s)
    for before, after in zip(cut, resumed, strict=True):
        assert before.prediction_id == rows[before.chat_id]["id"]
        assert "end" not in before.events  # cut mid-answer
        assert after.status == 200
        # Exactly the missing frames, in order, ending with `end`.
        assert before.frames + after.frames == stream(s.redis_url, before.prediction_id)
        assert after.events[-2:] == ["metadata", "end"]
        assert (before.text + after.text) == _tokens(40)
        assert rows[before.chat_id]["status"] == "succeeded"
    measure(
        "web_shutdown",
        streams_closed_after_s=round(closed_after, 2),
        daphne_exit_code=exit_code,
        daphne_stopped_after_s=round(took, 2),
    )
