"""The rq entry point of a prediction: its arguments across releases."""

from __future__ import annotations

from typing import Any

from predictions import jobs


async def test_a_job_from_a_newer_web_process_runs_with_the_arguments_this_worker_knows(
    monkeypatch, caplog
):
    ran: list[tuple[str, dict[str, Any]]] = []

    async def aprediction_run(prediction_id: str, **kwargs: Any) -> None:
        ran.append((prediction_id, kwargs))

    monkeypatch.setattr(jobs, "aprediction_run", aprediction_run)
    caplog.set_level("INFO", logger="predictions.jobs")

    await jobs.prediction_run_job("p1", reply_to="inbox.1", priority="high")

    assert ran == [("p1", {"worker_name": "", "reply_to": "inbox.1"})]
    assert "ignoring job arguments ['priority']" in caplog.text
