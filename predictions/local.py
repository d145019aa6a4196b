"""Main mode: run predictions as tasks on the web process's event loop, and stop them."""

from __future__ import annotations

import asyncio
import logging
import time

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
        try:
            await aprediction_run(prediction_id, worker_name="main")
        except asyncio.CancelledError:
            logger.info("prediction %s task cancelled", prediction_id)
        except Exception:
            logger.exception("prediction %s task crashed", prediction_id)
        finally:
            _tasks.pop(prediction_id, None)
            _cancelled.pop(prediction_id, None)

    task = asyncio.get_running_loop().create_task(run(), name=f"prediction-{prediction_id}")
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
