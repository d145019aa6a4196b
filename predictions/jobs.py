"""rq entry points: async job functions run by the worker's event loop."""

from __future__ import annotations

import logging

from rq import get_current_job

from predictions.services import aprediction_run

logger = logging.getLogger(__name__)


async def prediction_run_job(
    prediction_id: str, reply_to: str | None = None, **newer: object
) -> None:
    """Run one prediction on the worker: the prediction id, and the inbox of the web process
    that asked for it (its events also go there, see events.RedisTransport.reserve).

    Keyword arguments that a later release's web process may add are logged and ignored, so a
    job enqueued by a newer web process still runs on this worker during a rolling upgrade.
    """
    if newer:
        logger.info("prediction %s: ignoring job arguments %s", prediction_id, sorted(newer))
    job = get_current_job()
    worker_name = (job.worker_name if job is not None else "") or ""
    logger.info("job %s: prediction %s claimed", job.id if job else "-", prediction_id)
    await aprediction_run(prediction_id, worker_name=worker_name, reply_to=reply_to)
