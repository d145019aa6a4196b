"""Measure one ConcurrentWorker process: streaming-like jobs it holds at once, no-op throughput.

Not a test. Needs a real, empty Redis database (flushed afterwards):

    .venv/bin/python bench/worker_capacity.py [--redis-url redis://127.0.0.1:6379/13]

1. Streaming-like jobs: each awaits 20 x 100 ms (20 "tokens"); one wave of N jobs at concurrency
   N. Ideal wall time is 2 s; token lateness shows when the loop stops keeping up.
2. Throughput: 2,000 no-op async jobs at concurrency 100.
Jobs run in this process (burst mode); worker logging is reduced to warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

from redis import Redis
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predictions.worker import ConcurrentWorker

QUEUE = "bench-worker-capacity"
LATENESS: list[float] = []


async def token_job(tokens: int, delay: float) -> None:
    """Await `tokens` sleeps of `delay` seconds, recording how late the worst one woke up."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    for _ in range(tokens):
        started = loop.time()
        await asyncio.sleep(delay)
        worst = max(worst, loop.time() - started - delay)
    LATENESS.append(worst)


async def noop_job() -> None:
    """Do nothing: measures the per-job cost of rq's bookkeeping through the worker."""


def run_burst(connection: Redis, concurrency: int) -> tuple[float, float, int]:
    """Run a burst worker; return (wall seconds, CPU seconds, peak in-flight jobs)."""
    worker = ConcurrentWorker(
        [Queue(QUEUE, connection=connection)],
        connection=connection,
        concurrency=concurrency,
        health_port=0,
        heartbeat_interval=10,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, worker.in_flight_count)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    worker.work(burst=True, logging_level="WARNING")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done.set()
    sampler.join()
    return wall, cpu, peak


def enqueue(queue: Queue, count: int, func: object, *args: object) -> None:
    for start in range(0, count, 500):
        batch = [
            Queue.prepare_data(func, args=args, result_ttl=60)
            for _ in range(min(500, count - start))
        ]
        queue.enqueue_many(batch)


def main() -> None:
    """Run both measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--levels", default="100,250,500,1000,2000,3000")
    parser.add_argument("--noop-jobs", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("predictions.worker").setLevel(logging.WARNING)

    connection = Redis.from_url(args.redis_url)
    if connection.dbsize():
        sys.exit(f"refusing to run: {args.redis_url} is not empty (it gets flushed)")
    queue = Queue(QUEUE, connection=connection)
    try:
        print("streaming-like jobs: 20 tokens x 100 ms each, one wave at concurrency N")
        print(
            f"{'N':>6} {'wall s':>7} {'jobs/s':>7} {'peak':>6} {'CPU %':>6} "
            f"{'late p50 ms':>11} {'p99 ms':>7} {'max ms':>7}"
        )
        for level in (int(n) for n in args.levels.split(",")):
            LATENESS.clear()
            enqueue(queue, level, token_job, 20, 0.1)
            wall, cpu, peak = run_burst(connection, level)
            late = sorted(LATENESS)
            p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
            print(
                f"{level:>6} {wall:>7.2f} {level / wall:>7.0f} {peak:>6} {100 * cpu / wall:>6.0f} "
                f"{1000 * statistics.median(late):>11.1f} {1000 * p99:>7.1f} "
                f"{1000 * late[-1]:>7.1f}"
            )
            connection.flushdb()

        enqueue(queue, args.noop_jobs, noop_job)
        wall, cpu, peak = run_burst(connection, 100)
        print(
            f"\nno-op async jobs: {args.noop_jobs} at concurrency 100: {wall:.2f} s, "
            f"{args.noop_jobs / wall:.0f} jobs/s, {1000 * cpu / args.noop_jobs:.2f} ms CPU/job, "
            f"peak in flight {peak}"
        )
    finally:
        connection.flushdb()


if __name__ == "__main__":
    main()
