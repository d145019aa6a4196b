"""Queue mode with real processes: daphne web processes and `manage.py rqworker` workers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from tests.conftest import offline_flow
from tests.e2e.conftest import Stack, wait_until


def parse_sse(raw: str) -> list[dict[str, Any]]:
    frames = []
    for block in raw.split("\n\n"):
        lines = block.split("\n")
        data = [line[5:] for line in lines if line.startswith("data:")]
        ids = [line[3:] for line in lines if line.startswith("id:")]
        if data:
            frames.append({"seq": int(ids[0]), **json.loads(data[0])})
    return frames


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("chatMessageId",)}


async def _predict_all(
    url: str, chatflow_id: str, n: int, concurrency: int, **extra: Any
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            async with semaphore:
                return await client.post(
                    f"/api/v1/prediction/{chatflow_id}",
                    json={"question": f"q{i}", "chatId": f"chat-{i}", **extra},
                )

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_e2e_hundred_predictions_spread_over_two_workers_match_main_mode(stack: Stack):
    chatflow_id = stack.create_chatflow(offline_flow(tokens=10, delay_ms=5))
    web = stack.start_web()
    stack.start_worker(WORKER_CONCURRENCY="20")
    stack.start_worker(WORKER_CONCURRENCY="20")
    responses = asyncio.run(_predict_all(web, chatflow_id, 100, 40))
    assert [r.status_code for r in responses] == [200] * 100
    queue_bodies = [r.json() for r in responses]

    stack.mode = "main"
    main_web = stack.start_web(MODE="main")
    main_bodies = [r.json() for r in asyncio.run(_predict_all(main_web, chatflow_id, 100, 40))]
    assert [without_ids(b) for b in queue_bodies] == [without_ids(b) for b in main_bodies]
    assert [list(b) for b in queue_bodies] == [list(b) for b in main_bodies]

    # Both workers took part: every prediction names the worker that ran it.
    code = (
        "import django; django.setup()\n"
        "from predictions.models import Prediction\n"
        "print(sorted(set(Prediction.objects.exclude(worker_name='main')"
        ".values_list('worker_name', flat=True))))"
    )
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(json.loads(out.strip().replace("'", '"'))) == 2


def test_e2e_streaming_order_and_late_readers_on_two_web_processes(stack: Stack):
    chatflow_id = stack.create_chatflow(offline_flow(tokens=40, delay_ms=20))
    web_a = stack.start_web()
    web_b = stack.start_web()
    stack.start_worker()

    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{web_a}/api/v1/prediction/{chatflow_id}",
            json={"question": "hi", "streaming": True},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.iter_text()
        first = next(chunks)
        while 'event":"token' not in first:
            first += next(chunks)
        # Mid-answer: attach from the other web process, from the start.
        prediction_id = _prediction_id(stack)
        with client.stream(
            "GET",
            f"{web_b}/api/v1/predictions/{prediction_id}/events",
            headers={"Last-Event-ID": "0"},
        ) as other:
            other_raw = "".join(other.iter_text())
        own_raw = first + "".join(chunks)
    own = parse_sse(own_raw)
    assert [f["event"] for f in own] == ["start"] + ["token"] * 40 + ["metadata", "end"]
    assert [f["seq"] for f in own] == list(range(1, 44))
    assert parse_sse(other_raw) == own

    # A late reader after the end, and a resuming one, on the other web process.
    late = parse_sse(
        httpx.get(f"{web_b}/api/v1/predictions/{prediction_id}/events", timeout=30).text
    )
    assert late == own
    resumed = parse_sse(
        httpx.get(
            f"{web_b}/api/v1/predictions/{prediction_id}/events",
            headers={"Last-Event-ID": "30"},
            timeout=30,
        ).text
    )
    assert resumed == own[30:]


def _prediction_id(stack: Stack) -> str:
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    code = (
        "import django; django.setup()\n"
        "from predictions.models import Prediction\n"
        "p = Prediction.objects.order_by('-enqueued_at').first()\n"
        "print(p.id if p else '')"
    )

    def latest() -> str:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=stack.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.splitlines()[-1] if out else ""

    return wait_until(latest, 20, "the prediction row")


def test_e2e_one_worker_runs_fifty_one_second_predictions_at_once(stack: Stack):
    # 20 tokens x 50 ms = 1 s of model time each.
    chatflow_id = stack.create_chatflow(offline_flow(tokens=20, delay_ms=50, memory=False))
    web = stack.start_web()
    stack.start_worker(WORKER_CONCURRENCY="50")
    started = time.monotonic()
    responses = asyncio.run(_predict_all(web, chatflow_id, 50, 50))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 50
    # Serial would be 50 s; concurrent is about 1 s plus overhead. A loose bound that
    # cannot flake on a busy machine and still proves concurrency.
    assert elapsed < 15, f"50 predictions took {elapsed:.1f} s"


def test_e2e_queue_mode_on_sqlite_with_two_workers(tmp_path, redis_server):
    """One host, one SQLite file (WAL, busy timeout, immediate transactions), two workers."""
    stack = Stack(
        tmp=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'flowsite.sqlite3'}",
        redis_url=redis_server,
    )
    (tmp_path / "home").mkdir()
    try:
        stack.manage("migrate", "--noinput", "-v0")
        chatflow_id = stack.create_chatflow(offline_flow(tokens=10, delay_ms=5))
        web = stack.start_web()
        stack.start_worker(WORKER_CONCURRENCY="20")
        stack.start_worker(WORKER_CONCURRENCY="20")
        responses = asyncio.run(_predict_all(web, chatflow_id, 60, 30))
        assert [r.status_code for r in responses] == [200] * 60
        assert all(r.json()["text"] for r in responses)
    finally:
        stack.stop()
