"""The rq worker class of Flowsite: many predictions at once as tasks on one event loop.

`predictions.worker.ConcurrentWorker` is what `RQ["WORKER_CLASS"]` names; see
`predictions.worker.concurrent` for its contract (concurrency, heartbeats and the abandoned-job
bound, stop/cancel, shutdown and requeue, health endpoints).
"""

from .concurrent import CANCELLED_TO_REQUEUE, CANCELLED_TO_STOP, ConcurrentWorker

__all__ = ["CANCELLED_TO_REQUEUE", "CANCELLED_TO_STOP", "ConcurrentWorker"]
