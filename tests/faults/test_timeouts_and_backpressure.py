"""Time limits and back-pressure with real processes: PREDICTION_TIMEOUT inside the running node,
the web deadline when no worker answers, and MAX_QUEUE_LENGTH."""

from __future__ import annotations

import asyncio

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
)

TIMEOUT, MARGIN = 2, 1
SLACK = 1.5


def test_prediction_timeout_on_the_worker_and_on_the_web(fault_stack: Stack, measure):
    s = fault_stack
    s.env_extra.update(PREDICTION_TIMEOUT=str(TIMEOUT), PREDICTION_TIMEOUT_MARGIN=str(MARGIN))
    # 100 tokens x 100 ms = 10 s: far over the 2 s limit.
    chatflow_id = s.create_chatflow(offline_flow(tokens=100, delay_ms=100, memory=False))
    web = s.start_web()

    async def both(prefix: str):
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                ask(client, web, chatflow_id, f"{prefix}-json"),
                ask(client, web, chatflow_id, f"{prefix}-sse", streaming=True),
            )

    # No worker at all: the web side gives up after PREDICTION_TIMEOUT + margin.
    unserved = asyncio.run(both("unserved"))
    # A worker: it stops the run inside the model call after PREDICTION_TIMEOUT.
    s.start_worker()
    served = asyncio.run(both("served"))

    rows = predictions(s)
    for outcome in (*unserved, *served):
        row = rows[outcome.chat_id]
        assert (row["status"], row["error_code"]) == ("failed", "prediction_timeout"), row
        if outcome.streaming:
            assert outcome.status == 200
            assert outcome.events[-2:] == ["error", "end"]
            assert "PREDICTION_TIMEOUT" in outcome.frames[-2]["data"].upper()
        else:
            assert outcome.status == 504
            assert outcome.body["code"] == "prediction_timeout"
    for outcome in unserved:
        assert TIMEOUT + MARGIN - 0.5 < outcome.elapsed < TIMEOUT + MARGIN + SLACK
    for outcome in served:
        assert TIMEOUT - 0.5 < outcome.elapsed < TIMEOUT + SLACK
        events = names(stream(s.redis_url, rows[outcome.chat_id]["id"]))
        assert events[0] == "start"
        assert events[-2:] == ["error", "end"]
    # The jobs of the unserved ones reached the worker later: it did not run them.
    assert all(predictions(s)[o.chat_id]["attempts"] == 0 for o in unserved)
    assert not message_counts(s)
    measure(
        "timeouts",
        web_deadline_s=[round(o.elapsed, 2) for o in unserved],
        worker_timeout_s=[round(o.elapsed, 2) for o in served],
        limit_s=TIMEOUT,
        margin_s=MARGIN,
    )


def test_max_queue_length_refuses_with_503_then_drains(fault_stack: Stack, measure):
    s = fault_stack
    s.env_extra["MAX_QUEUE_LENGTH"] = "5"
    chatflow_id = s.create_chatflow(offline_flow(tokens=5, memory=False))
    web = s.start_web()

    async def scenario():
        async with httpx.AsyncClient(timeout=30) as client:
            waiting = [
                asyncio.create_task(ask(client, web, chatflow_id, f"q{i}", streaming=True))
                for i in range(5)
            ]
            await await_for(lambda: len(predictions(s)) == 5, 15, "5 predictions queued")
            refused = await client.post(
                f"{web}/api/v1/prediction/{chatflow_id}", json={"question": "one too many"}
            )
            await asyncio.to_thread(s.start_worker)
            answered = await asyncio.gather(*waiting)
            after = await client.post(
                f"{web}/api/v1/prediction/{chatflow_id}", json={"question": "room again"}
            )
            return refused, answered, after

    refused, answered, after = asyncio.run(scenario())

    assert refused.status_code == 503
    assert refused.json()["code"] == "queue_full"
    assert refused.headers["Retry-After"] == "10"
    assert [o.events[-2:] for o in answered] == [["metadata", "end"]] * 5
    assert after.status_code == 200
    rows = predictions(s)
    assert len(rows) == 6  # the refused one was never stored
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    measure("backpressure", refused_status=refused.status_code, code="queue_full")
