"""Run one ConcurrentWorker process without Django, for the signal and crash tests."""

from __future__ import annotations

import argparse
import logging

from redis import Redis

from predictions.worker import ConcurrentWorker


def main() -> None:
    """Parse the options and work until stopped (or until empty with --burst)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True, help="Redis URL of the test database")
    parser.add_argument("--queue", required=True, help="queue to work on")
    parser.add_argument("--name", default=None, help="worker name")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once")
    parser.add_argument("--shutdown-timeout", type=float, default=30, help="drain seconds")
    parser.add_argument("--heartbeat-interval", type=float, default=1, help="seconds")
    parser.add_argument("--heartbeat-ttl", type=int, default=None, help="seconds")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    worker = ConcurrentWorker(
        [args.queue],
        name=args.name,
        connection=Redis.from_url(args.redis_url),
        concurrency=args.concurrency,
        shutdown_timeout=args.shutdown_timeout,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_ttl=args.heartbeat_ttl,
        health_port=0,
    )
    worker.work(burst=args.burst)


if __name__ == "__main__":
    main()
