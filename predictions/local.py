"""Main mode: run predictions as tasks on the web process's event loop, and stop them."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections

logger = logging.getLogger(__name__)

_tasks: dict[str, asyncio.Task[None]] = {}
# Cancel requests for predictions whose task has not claimed them yet: id -> time requested.
_cancelled: dict[str, float] = {}
_CANCEL_MEMORY_SECONDS = 3600.0


def start(prediction_id: str) -> asyncio.Task[None]:
    """Start the prediction's run as a task of the running loop; it outlives the request."""
    from predictions.events import LocalTransport, get_transport
    from predictions.services import aprediction_run

    transport = get_transport()
    if isinstance(transport, LocalTransport):
        transport.ensure(prediction_id)

    async def run() -> None:
        # Like a request: a thread of its own for its ORM calls, and its database connection
        # handed back at the end, whether or not the request that started it is still there.
        async with ThreadSensitiveContext():
            try:
                await aprediction_run(prediction_id, worker_name="main")
            except asyncio.CancelledError:
                logger.info("prediction %s task cancelled", prediction_id)
            except Exception:
                logger.exception("prediction %s task crashed", prediction_id)
            finally:
                _tasks.pop(prediction_id, None)
                _cancelled.pop(prediction_id, None)
                await asyncio.shield(sync_to_async(connections.close_all)())

    # A context of its own, not the request's: the run outlives a request that ends (a client
    # that leaves), and calls made in an ended request's context would open a thread and a
    # pooled connection that nothing ever gives back.
    task = asyncio.get_running_loop().create_task(
        run(), name=f"prediction-{prediction_id}", context=contextvars.Context()
    )
    _tasks[prediction_id] = task
    return task


def request_cancel(prediction_id: str) -> None:
    now = time.monotonic()
    for pid, at in list(_cancelled.items()):
        if now - at > _CANCEL_MEMORY_SECONDS:
            del _cancelled[pid]
    _cancelled[prediction_id] = now


def cancel_requested(prediction_id: str) -> bool:
    return prediction_id in _cancelled


def cancel_task(prediction_id: str) -> bool:
    task = _tasks.get(prediction_id)
    if task is None or task.done():
        return False
    task.cancel()
    return True


def in_flight() -> list[str]:
    return list(_tasks)
