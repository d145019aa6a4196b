"""Measure the CPU an event write costs the writer: redis-py's asyncio client vs CommandPipe.

Not a test. Needs a real Redis database that may be flushed:

    .venv/bin/python -m bench.redis_writes [--redis-url redis://127.0.0.1:6379/13]

`--writers` tasks (50) each write `--writes` / `--writers` events in a row, as a worker's
predictions do: the event script of `predictions.events` (one XADD, a PUBLISH) with a 40-byte
token and a 120-byte live message, through redis-py's `register_script` on a blocking pool (as
before 2026-12-07) and through `CommandPipe.run_script`. Prints the writer's CPU per write (user +
system) and writes per second, each way, `--rounds` times.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import redis.asyncio as aredis

from predictions.events import _WRITE_SCRIPT
from predictions.redispipe import CommandPipe


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _args(writer: int, seq: int) -> tuple[list[str], list[object]]:
    keys = [f"bench:stream:{writer}"]
    args: list[object] = [100, 60, 0, "bench:channel", "", b"m" * 120]
    args += [f"0-{seq}", "token", "t" * 40, ""]
    return keys, args


async def _measure(name: str, write, writers: int, writes: int) -> None:
    async def one_writer(writer: int) -> None:
        for seq in range(1, writes // writers + 1):
            await write(*_args(writer, seq))

    started, cpu = time.perf_counter(), _cpu()
    await asyncio.gather(*(one_writer(w) for w in range(writers)))
    wall, used = time.perf_counter() - started, _cpu() - cpu
    print(f"{name:>10}: {used / writes * 1e6:6.1f} µs CPU per write, {writes / wall:8.0f} writes/s")


async def main(url: str, writers: int, writes: int, rounds: int) -> None:
    client = aredis.Redis.from_pool(
        aredis.BlockingConnectionPool.from_url(url, max_connections=50, timeout=5, socket_timeout=5)
    )
    script = client.register_script(_WRITE_SCRIPT)
    pipe = CommandPipe(aredis.ConnectionPool.from_url(url, socket_timeout=5).make_connection())

    async def with_redis_py(keys, args):
        await script(keys=keys, args=args)

    async def with_pipe(keys, args):
        await pipe.run_script(_WRITE_SCRIPT, keys, args)

    for _ in range(rounds):
        for name, write in (("redis-py", with_redis_py), ("pipe", with_pipe)):
            await client.flushdb()
            await _measure(name, write, writers, writes)
    await client.flushdb()
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--writes", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.redis_url, options.writers, options.writes, options.rounds))
