"""Call one rq job's function on the event loop: its current-job context, timeout, sync threads."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from rq.job import Job, _current_job
from rq.timeouts import JobTimeoutException
from rq.utils import now

T = TypeVar("T")


async def perform(job: Job, default_timeout: int) -> Any:
    """Run `job`'s function and return its result, as rq's `perform_job` does in a work horse.

    Sets rq's current job for this task only (each task has its own context), so
    `rq.get_current_job()` is right inside concurrent jobs. `job.timeout` (or `default_timeout`
    when unset; none when -1) is enforced by cancelling the task: the job then fails with rq's
    `JobTimeoutException`. Raises whatever the job raises.
    """
    _current_job.set(job)
    timeout = job.timeout or default_timeout
    limit = None if timeout == -1 else float(timeout)
    message = f"Task exceeded maximum timeout value ({timeout} seconds)"
    job.started_at = now()
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            return_value = await _call(job)
    except TimeoutError as exc:
        if scope.expired():
            # Chained to the job's own traceback, which shows where it was when time ran out.
            raise JobTimeoutException(message) from exc
        raise
    if scope.expired():
        # The job swallowed its cancellation and returned late: it is still over its limit.
        raise JobTimeoutException(message)
    return return_value


async def _call(job: Job) -> Any:
    func = job.func
    if func is None:
        raise ValueError("Cannot execute job: function is None")
    args, kwargs = job.args, job.kwargs
    if _is_async_callable(func):
        result = func(*args, **kwargs)
    else:
        result = await run_in_daemon_thread(func, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _is_async_callable(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an instance with `async def __call__`
    )


async def run_in_daemon_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking function in a new daemon thread, in the caller's context (its current job).

    Not a pool thread: a cancelled sync job cannot be interrupted, and a pool thread that never
    returns would keep the process from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = context.run(func, *args, **kwargs)
        except StopIteration as exc:
            # A Future refuses StopIteration; wrap it as asyncio does since Python 3.12.
            error = RuntimeError("StopIteration raised by a job function")
            error.__cause__ = exc
        except BaseException as exc:  # handed to the awaiting task, as asyncio.to_thread does
            error = exc
        # The loop may be closed by the time a cancelled job returns; nobody waits then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="rq-sync-job", daemon=True).start()
    return await future
