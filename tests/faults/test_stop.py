"""Stop with real processes: abort and cancel of running and queued predictions, no-op on finished
ones, the PREDICTION_STOP_ON_DISCONNECT policy."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import offline_flow
from tests.faults.conftest import (
    Stack,
    ask,
    await_for,
    message_counts,
    names,
    predictions,
    stream,
    wait_for,
)

# A stop must reach the client's stream (abort + end) within this many seconds of the request.
STOP_BOUND = 0.5


def _queue_drained(stack: Stack) -> bool:
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    try:
        waiting = client.llen("rq:queue:flowsite-queue")
        started = client.zcard("rq:wip:flowsite-queue")
        return waiting == 0 and started == 0
    finally:
        client.close()


def test_abort_50_running_and_50_queued_predictions(fault_stack: Stack, measure):
    s = fault_stack
    # 90 tokens x 1 s: long answers, so the running ones are mid-answer when stopped.
    chatflow_id = s.create_chatflow(offline_flow(tokens=90, delay_ms=1000, memory=False))
    web = s.start_web()
    s.start_worker(WORKER_CONCURRENCY="25")
    s.start_worker(WORKER_CONCURRENCY="25")

    async def scenario():
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            admission = asyncio.Semaphore(10)
            clients = [
                asyncio.create_task(
                    ask(client, web, chatflow_id, f"c{i}", streaming=True, admission=admission)
                )
                for i in range(100)
            ]

            def mid_answer():
                rows = predictions(s)
                running = [r for r in rows.values() if r["status"] == "running"]
                if len(rows) < 100 or len(running) < 50:
                    return None
                if not all(len(stream(s.redis_url, r["id"])) >= 2 for r in running):
                    return None  # every running one has streamed a token
                return rows

            rows = await await_for(mid_answer, 60, "50 predictions running, 50 queued")
            running = sorted(r["chat_id"] for r in rows.values() if r["status"] == "running")
            queued = sorted(r["chat_id"] for r in rows.values() if r["status"] == "queued")
            assert (len(running), len(queued)) == (50, 50)
            assert len({rows[c]["worker_name"] for c in running}) == 2  # both workers

            gate = asyncio.Semaphore(5)
            responded: dict[str, float] = {}

            async def stop(index: int, chat_id: str) -> tuple[str, float, int]:
                async with gate:
                    started = time.monotonic()
                    if index % 2:
                        url = f"{web}/api/v1/chatmessage/abort/{chatflow_id}/{chat_id}"
                        response = await client.put(url)
                    else:
                        url = f"{web}/api/v1/predictions/{rows[chat_id]['id']}/cancel"
                        response = await client.post(url)
                    responded[chat_id] = time.monotonic() - started
                    return chat_id, started, response.status_code

            # Every queued one first: stopping a running one frees a slot, and a worker then claims
            # a queued one whose stop has not landed yet (it would run as a started one).
            requests = await asyncio.gather(*(stop(i, c) for i, c in enumerate(queued)))
            requests += await asyncio.gather(
                *(stop(i, c) for i, c in enumerate(running, start=len(queued)))
            )
            outcomes = {o.chat_id: o for o in await asyncio.gather(*clients)}
            return rows, running, queued, requests, outcomes, responded

    _, running, queued, requests, outcomes, responded = asyncio.run(scenario())

    assert [status for _, _, status in requests] == [200] * 100
    latency = {}
    for chat_id, requested_at, _ in requests:
        outcome = outcomes[chat_id]
        assert outcome.events[-2:] == ["abort", "end"], (chat_id, outcome.events[-5:])
        latency[chat_id] = outcome.frame_times[-1] - requested_at
    slowest = max(latency.values())
    measure(
        "stop",
        running_max_ms=round(max(latency[c] for c in running) * 1000),
        queued_max_ms=round(max(latency[c] for c in queued) * 1000),
        median_ms=round(sorted(latency.values())[50] * 1000),
        all_ms=[round(latency[c] * 1000) for c, _, _ in requests],
        resp_ms=[round(responded[c] * 1000) for c, _, _ in requests],
    )
    assert slowest < STOP_BOUND, f"slowest stop took {slowest:.3f} s"

    # The queued jobs reach the workers after the stop, which must not run them.
    wait_for(lambda: _queue_drained(s), 30, "the queue drained")
    final = predictions(s)
    assert {r["status"] for r in final.values()} == {"cancelled"}
    assert {r["error_code"] for r in final.values()} == {"cancelled"}
    for chat_id in queued:
        assert final[chat_id]["attempts"] == 0
        assert final[chat_id]["started_at"] is None
        assert names(stream(s.redis_url, final[chat_id]["id"])) == ["abort", "end"]
        assert outcomes[chat_id].events == ["abort", "end"]
    for chat_id in running:
        events = names(stream(s.redis_url, final[chat_id]["id"]))
        assert events[0] == "start"
        assert events[-2:] == ["abort", "end"]
        assert events.count("end") == 1
        assert set(events[1:-2]) <= {"token"}
        assert outcomes[chat_id].frames == stream(s.redis_url, final[chat_id]["id"])
    assert not message_counts(s)


def test_stop_on_disconnect_policy_and_stopping_what_has_ended(fault_stack: Stack):
    s = fault_stack
    chatflow_id = s.create_chatflow(offline_flow(tokens=30, delay_ms=100, memory=False))
    keep_web = s.start_web()
    stop_web = s.start_web(PREDICTION_STOP_ON_DISCONNECT="true")
    s.start_worker()

    def leave_after_first_token(web: str, chat_id: str) -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{web}/api/v1/prediction/{chatflow_id}",
                json={"question": "hi", "chatId": chat_id, "streaming": True},
            ) as response,
        ):
            for chunk in response.iter_text():
                if '"event":"token"' in chunk:
                    return  # closes the connection mid-answer

    leave_after_first_token(keep_web, "kept")
    leave_after_first_token(stop_web, "stopped")

    wait_for(
        lambda: {r["status"] for r in predictions(s).values()} <= {"succeeded", "cancelled"},
        30,
        "both predictions ended",
    )
    rows = predictions(s)
    # Default: the answer runs to the end and is saved (as in Flowise).
    assert rows["kept"]["status"] == "succeeded"
    assert names(stream(s.redis_url, rows["kept"]["id"]))[-2:] == ["metadata", "end"]
    # PREDICTION_STOP_ON_DISCONNECT=true: the run stops when its client leaves.
    assert rows["stopped"]["status"] == "cancelled"
    assert names(stream(s.redis_url, rows["stopped"]["id"]))[-2:] == ["abort", "end"]
    counts = message_counts(s)
    assert counts[(rows["kept"]["id"], "apiMessage")] == 1
    assert not any(pid == rows["stopped"]["id"] for pid, _ in counts)

    # Stopping what has ended is a harmless no-op: status, result, stream and history stay.
    streams = {chat_id: stream(s.redis_url, rows[chat_id]["id"]) for chat_id in rows}
    for chat_id, ended in (("kept", "succeeded"), ("stopped", "cancelled")):
        cancel = httpx.post(f"{keep_web}/api/v1/predictions/{rows[chat_id]['id']}/cancel")
        abort = httpx.put(f"{keep_web}/api/v1/chatmessage/abort/{chatflow_id}/{chat_id}")
        assert (cancel.status_code, cancel.json()["predictionStatus"]) == (200, ended)
        assert cancel.json()["message"] == f"Prediction already {ended}"
        assert (abort.status_code, abort.json()["aborted"]) == (200, 0)
    after = predictions(s)
    for chat_id in rows:
        assert (after[chat_id]["status"], after[chat_id]["result"]) == (
            rows[chat_id]["status"],
            rows[chat_id]["result"],
        )
        assert stream(s.redis_url, rows[chat_id]["id"]) == streams[chat_id]
    assert message_counts(s) == counts
