"""Benchmark Flowsite end to end, in main and queue mode, against a mock OpenAI-compatible model.

    python -m bench.run [--quick] [--modes main,queue] [--concurrency 10,50,200]
                        [--requests 500] [--tokens 20] [--delay-ms 10] [--out bench/out]

Starts everything itself on free ports, each process in its own process group: two mock models
(`--delay-ms` per token, and 0 ms for the "model without delay" rows), then per mode a fresh
PostgreSQL database, `manage.py migrate`, the chatflows, one daphne web process and, in queue
mode, one `manage.py rqworker`. Readiness is polled (`/healthz`, `/readyz`), never slept for.
Every row: a warm-up, then N predictions at concurrency C (new chatId each), validated, with
throughput, latency and TTFT percentiles, CPU per prediction and RSS of the web and worker
processes. Writes results.json, results.md, bench.png and the processes' logs to `--out`.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from bench import procs, report
from bench.loadgen import close_clients, new_clients, percentile, run_load
from bench.procs import ROOT, RssSampler, Service, free_port, spawn, wait_ready

PYTHON = sys.executable
DAPHNE = str(Path(sys.executable).parent / "daphne")
APPLICATION = "flowsite.asgi:application"
DATABASE_NAME = "flowsite_bench"
SECRET_KEY = "flowsite-bench-secret-key-not-for-production-0123456789"
QUEUE_NAME = "flowsite-bench"
LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\bWARNING\b|Exception|exception")
MB = 1024 * 1024


@dataclass(frozen=True)
class RowSpec:
    """What one row runs: the kind of prediction, its concurrency and how many."""

    kind: str  # json | stream | nodelay
    concurrency: int
    requests: int

    @property
    def streaming(self) -> bool:
        return self.kind == "stream"


@dataclass
class ModeContext:
    """The processes and chatflows of one mode."""

    mode: str
    port: int
    web: Service
    workers: list[Service]
    mocks: dict[str, Service]  # "delay", "nodelay"
    mock_urls: dict[str, str]  # same keys → base URL (…/v1)
    chatflows: dict[str, str]  # same keys → chatflow id


# --- command line ------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrency values must be at least 1")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _modes(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if not modes or any(m not in ("main", "queue") for m in modes):
        raise argparse.ArgumentTypeError("modes: main, queue or main,queue")
    return modes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; --quick changes the defaults that were not given."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="100 requests per row, fewer rows")
    parser.add_argument("--modes", type=_modes, default=["main", "queue"])
    parser.add_argument(
        "--concurrency", type=_ints, default=None, help="non-streaming rows (10,50,200)"
    )
    parser.add_argument(
        "--stream-concurrency", type=_ints, default=None, help="streaming rows (10,50)"
    )
    parser.add_argument(
        "--nodelay-concurrency", type=_ints, default=None, help="model without delay rows (1,50)"
    )
    parser.add_argument("--requests", type=int, default=None, help="predictions per row (500)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up predictions per row (max(10, C))"
    )
    parser.add_argument("--tokens", type=int, default=20, help="tokens per mock answer")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="mock delay before each token")
    parser.add_argument("--worker-concurrency", type=int, default=1000)
    parser.add_argument(
        "--workers", type=_positive, default=1, help="rqworker processes in queue mode (1)"
    )
    parser.add_argument(
        "--seed-messages",
        type=int,
        default=0,
        help="chat messages stored before the rows (across 1,000 sessions of the bench chatflows)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--postgres",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help=f"an admin connection; the benchmark (re)creates the database {DATABASE_NAME}",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/11",
        help="a Redis database for the benchmark alone: it is flushed before each mode",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.concurrency is None:
        args.concurrency = [10, 50] if quick else [10, 50, 200]
    if args.stream_concurrency is None:
        args.stream_concurrency = [50] if quick else [10, 50]
    if args.nodelay_concurrency is None:
        args.nodelay_concurrency = [1] if quick else [1, 50]
    if args.requests is None:
        args.requests = 100 if quick else 500
    if args.requests < 1 or args.tokens < 1 or args.delay_ms < 0:
        parser.error("--requests and --tokens must be at least 1, --delay-ms not negative")
    return args


def plan(args: argparse.Namespace) -> list[RowSpec]:
    """Return the rows to run in each mode."""
    return (
        [RowSpec("json", c, args.requests) for c in args.concurrency]
        + [RowSpec("stream", c, args.requests) for c in args.stream_concurrency]
        + [RowSpec("nodelay", c, args.requests) for c in args.nodelay_concurrency]
    )


# --- environment -------------------------------------------------------------------------------


def _settings_variables() -> set[str]:
    """Return every variable flowsite/settings.py and .env.example name (not to be inherited)."""
    names: set[str] = set()
    settings = (ROOT / "flowsite" / "settings.py").read_text()
    names.update(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', settings))
    example = ROOT / ".env.example"
    if example.exists():
        names.update(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE))
    return names


def server_env(
    args: argparse.Namespace, mode: str, port: int, worker_port: int, home: Path
) -> dict[str, str]:
    """Return the environment of the web and worker processes of `mode`."""
    env = {k: v for k, v in os.environ.items() if k not in _settings_variables()}
    database = urlsplit(args.postgres)._replace(path=f"/{DATABASE_NAME}")
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "flowsite.settings",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MODE": mode,
            "PORT": str(port),
            "DATABASE_URL": urlunsplit(database),
            "REDIS_URL": args.redis,
            "QUEUE_NAME": QUEUE_NAME,
            "WORKER_CONCURRENCY": str(args.worker_concurrency),
            "WORKER_PORT": str(worker_port),
            "LOG_LEVEL": "warning",
            "FLOWSITE_HOME": str(home),
            "SECRET_KEY": SECRET_KEY,
            "PREDICTION_TIMEOUT": "300",
            "OPENAI_API_KEY": "sk-bench",
            "FLOW_LLM_PROVIDER": "openai",
            "DEBUG": "false",
        }
    )
    return env


def recreate_database(admin_url: str) -> None:
    """Drop (if it exists) and create the benchmark database, with autocommit."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        name = sql.Identifier(DATABASE_NAME)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


SEED_SESSIONS = 1000
# The history read of a run, as runstore.history sends it.
HISTORY_QUERY = (
    'SELECT "role", "content" FROM "predictions_chatmessage" WHERE "chatflow_id" = %s'
    ' AND "session_id" = %s ORDER BY "created_at" DESC LIMIT %s'
)


def seed_messages(admin_url: str, chatflow_ids: list[str], count: int) -> list[str]:
    """Store `count` chat messages across SEED_SESSIONS sessions, spread over the chatflows, as
    past conversations (question and answer pairs); return the history query's plan."""
    import psycopg

    database = urlunsplit(urlsplit(admin_url)._replace(path=f"/{DATABASE_NAME}"))
    with psycopg.connect(database, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            """
            INSERT INTO predictions_chatmessage
                (id, chatflow_id, chat_id, session_id, role, content, memory_type, created_at)
            SELECT gen_random_uuid(), (%(flows)s::uuid[])[1 + (n / 2) %% cardinality(%(flows)s)],
                   'seed-' || ((n / 2) %% %(sessions)s), 'seed-' || ((n / 2) %% %(sessions)s),
                   CASE WHEN n %% 2 = 0 THEN 'userMessage' ELSE 'apiMessage' END,
                   'seeded message ' || n, 'Buffer Memory',
                   now() - interval '1 day' + n * interval '1 millisecond'
            FROM generate_series(0, %(count)s - 1) AS n
            """,
            {"flows": chatflow_ids, "sessions": SEED_SESSIONS, "count": count},
        )
        conn.execute("ANALYZE predictions_chatmessage")
        plan = conn.execute(
            "EXPLAIN ANALYZE " + HISTORY_QUERY, (chatflow_ids[0], "seed-0", 100)
        ).fetchall()
    return [row[0] for row in plan]


def database_activity(admin_url: str) -> tuple[int, int]:
    """Return (sessions, transactions) of the benchmark database so far (pg_stat_database).

    PostgreSQL publishes a backend's counters lazily (at the latest when it exits or after ~10 s
    idle), so per-row differences are close, not exact.
    """
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (DATABASE_NAME,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


class DatabaseConnectionSampler:
    """Sample how many connections the benchmark database has (pg_stat_activity); keep the peak."""

    def __init__(self, admin_url: str, interval: float = 0.2) -> None:
        self.admin_url = admin_url
        self.interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self.admin_url, autocommit=True, connect_timeout=5
        )
        try:
            while True:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (DATABASE_NAME,)
                )
                row = await cursor.fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def start(self) -> None:
        """Start sampling in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        """Stop sampling; return the peak number of connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak


async def mock_stats(url: str) -> dict[str, Any]:
    """Return a mock model's counters (GET /stats)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(url.removesuffix("/v1") + "/stats")
        response.raise_for_status()
        return dict(response.json())


def flush_redis(url: str) -> None:
    """Empty the benchmark's Redis database."""
    from redis import Redis

    client = Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


# --- one row -----------------------------------------------------------------------------------


def _cpu(*services: Service) -> float:
    return sum(procs.tree_cpu_seconds(service.process) for service in services)


def _own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def measure_row(
    ctx: ModeContext, spec: RowSpec, args: argparse.Namespace
) -> report.RowResult:
    """Warm up, then run one row and measure it."""
    model = "nodelay" if spec.kind == "nodelay" else "delay"
    url = f"http://127.0.0.1:{ctx.port}/api/v1/prediction/{ctx.chatflows[model]}"
    expected = "".join(f"tok{i} " for i in range(args.tokens))
    mock = ctx.mocks[model]
    warmup = args.warmup if args.warmup is not None else max(10, spec.concurrency)
    watched = {"web": ctx.web.process}
    watched.update({f"worker {n}": worker.process for n, worker in enumerate(ctx.workers)})
    clients = new_clients(spec.concurrency)
    try:
        warm = await run_load(
            clients, url, requests=warmup, streaming=spec.streaming, expected=expected
        )
        idle = {name: procs.tree_rss_bytes(p) for name, p in watched.items()}
        db_before = database_activity(args.postgres)
        mock_before = await mock_stats(ctx.mock_urls[model])
        cpu_before = (_cpu(ctx.web), _cpu(*ctx.workers), _cpu(mock), _own_cpu())
        busy_before, total_before, stolen_before = procs.machine_busy_seconds()
        sampler = RssSampler(watched)
        sampler.start()
        db_sampler = DatabaseConnectionSampler(args.postgres)
        db_sampler.start()
        load = await run_load(
            clients, url, requests=spec.requests, streaming=spec.streaming, expected=expected
        )
        peaks = await sampler.stop()
        db_peak = await db_sampler.stop()
        cpu_after = (_cpu(ctx.web), _cpu(*ctx.workers), _cpu(mock), _own_cpu())
        busy_after, total_after, stolen_after = procs.machine_busy_seconds()
        after = {name: procs.tree_rss_bytes(p) for name, p in watched.items()}
        db_after = database_activity(args.postgres)
        mock_after = await mock_stats(ctx.mock_urls[model])
    finally:
        await close_clients(clients)

    n = spec.requests
    web_ms, worker_ms, mock_ms, client_ms = (
        (a - b) * 1000 / n for a, b in zip(cpu_after, cpu_before, strict=True)
    )
    ok = load.ok
    latencies = [s.latency for s in ok]
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    total = total_after - total_before
    ours = sum(a - b for a, b in zip(cpu_after, cpu_before, strict=True))
    other_cores = (busy_after - busy_before - ours) / load.wall if load.wall > 0 else None

    def rss(kind: str) -> dict[str, float]:
        """The RSS of the process of `kind`; of several workers, the largest (per process)."""
        names = [name for name in watched if name.split()[0] == kind]
        if not names:
            return {}
        return {
            "idle": max(idle[name] for name in names) / MB,
            "peak": max(max(peaks[name], idle[name], after[name]) for name in names) / MB,
            "after": max(after[name] for name in names) / MB,
        }

    return report.RowResult(
        mode=ctx.mode,
        kind=spec.kind,
        concurrency=spec.concurrency,
        requests=n,
        ok=len(ok),
        errors=load.errors,
        error_samples=load.error_summary() + [f"warm-up: {e}" for e in warm.error_summary()],
        warmup_requests=warmup,
        warmup_errors=warm.errors,
        wall_s=load.wall,
        throughput=len(ok) / load.wall if load.wall > 0 else 0.0,
        p50_ms=_ms(percentile(latencies, 50)),
        p95_ms=_ms(percentile(latencies, 95)),
        p99_ms=_ms(percentile(latencies, 99)),
        max_ms=_ms(max(latencies)) if latencies else None,
        ttft_p50_ms=_ms(percentile(ttfts, 50)) if spec.streaming else None,
        ttft_p95_ms=_ms(percentile(ttfts, 95)) if spec.streaming else None,
        cpu_web_ms_per_pred=web_ms,
        cpu_worker_ms_per_pred=worker_ms if ctx.workers else None,
        cpu_server_ms_per_pred=web_ms + worker_ms,
        cpu_client_ms_per_pred=client_ms,
        cpu_mock_ms_per_pred=mock_ms,
        machine_busy_pct=100 * (busy_after - busy_before) / total if total > 0 else None,
        machine_stolen_pct=100 * (stolen_after - stolen_before) / total if total > 0 else None,
        other_cores=other_cores,
        db_sessions_per_pred=(db_after[0] - db_before[0]) / n,
        db_transactions_per_pred=(db_after[1] - db_before[1]) / n,
        db_connections_peak=db_peak,
        model_requests_per_pred=(mock_after["requests"] - mock_before["requests"]) / n,
        model_connections_per_pred=(mock_after["accepted"] - mock_before["accepted"]) / n,
        rss_web_mb=rss("web"),
        rss_worker_mb=rss("worker"),
    )


def _row_line(r: report.RowResult) -> str:
    def f(value: float | None) -> str:
        return f"{report.NONE:>5}" if value is None else f"{value:5.0f}"

    ttft = "" if r.ttft_p50_ms is None else f"  TTFT {f(r.ttft_p50_ms)}/{f(r.ttft_p95_ms)}"
    return (
        f"  {r.mode:5} {r.label:19} C={r.concurrency:<4} {r.ok:4}/{r.requests} ok "
        f"{r.errors:3} err  {r.throughput:6.1f}/s  p50/p95/p99/max {f(r.p50_ms)}/{f(r.p95_ms)}/"
        f"{f(r.p99_ms)}/{f(r.max_ms)} ms{ttft}  CPU {r.cpu_server_ms_per_pred:.1f} ms/pred"
        f"  busy {r.machine_busy_pct or 0:.0f}% (stolen {r.machine_stolen_pct or 0:.0f}%)"
    )


# --- one mode ----------------------------------------------------------------------------------


async def run_mode(
    mode: str, args: argparse.Namespace, mocks: dict[str, Service], mock_urls: dict[str, str]
) -> list[report.RowResult]:
    """Set up a fresh database and the processes of `mode`, run every row, stop them."""
    out: Path = args.out
    print(f"\n== {mode} mode")
    flush_redis(args.redis)
    recreate_database(args.postgres)
    home = Path(tempfile.mkdtemp(prefix=f"flowsite-bench-{mode}-"))
    port = free_port()
    worker_ports = [free_port() for _ in range(args.workers if mode == "queue" else 0)]
    env = server_env(args, mode, port, 0, home)
    web: Service | None = None
    workers: list[Service] = []
    rows: list[report.RowResult] = []
    try:
        setup_log = out / f"{mode}-setup.log"
        started = time.perf_counter()
        procs.run_checked(
            "migrate", [PYTHON, "manage.py", "migrate", "--noinput", "-v0"], env, setup_log
        )
        created = procs.run_checked(
            "chatflows", [PYTHON, "-m", "bench.flows", json.dumps(mock_urls)], env, setup_log
        )
        chatflows = json.loads(created.strip().splitlines()[-1])
        print(f"  database migrated, chatflows created in {time.perf_counter() - started:.1f} s")
        if args.seed_messages:
            started = time.perf_counter()
            plan_lines = seed_messages(args.postgres, list(chatflows.values()), args.seed_messages)
            print(
                f"  {args.seed_messages:,} chat messages stored across {SEED_SESSIONS:,} sessions"
                f" in {time.perf_counter() - started:.1f} s; a run's history read:"
            )
            for line in plan_lines:
                print(f"    {line}")

        web = spawn(
            f"{mode} web",
            [DAPHNE, "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024", APPLICATION],
            env,
            out / f"{mode}-web.log",
        )
        for n, worker_port in enumerate(worker_ports):
            suffix = f"-{n}" if n else ""  # the first keeps the log name of a single worker
            workers.append(
                spawn(
                    f"{mode} worker{suffix}",
                    [PYTHON, "manage.py", "rqworker"],
                    {**env, "WORKER_PORT": str(worker_port)},
                    out / f"{mode}-worker{suffix}.log",
                )
            )
        waited = await wait_ready(web, f"http://127.0.0.1:{port}/healthz")
        await wait_ready(web, f"http://127.0.0.1:{port}/readyz")
        text = f"  web (daphne, pid {web.pid}) ready on :{port} after {waited:.1f} s"
        for worker, worker_port in zip(workers, worker_ports, strict=True):
            waited = await wait_ready(worker, f"http://127.0.0.1:{worker_port}/readyz")
            text += f"; worker (pid {worker.pid}) ready on :{worker_port} after {waited:.1f} s"
        print(text)

        ctx = ModeContext(mode, port, web, workers, mocks, mock_urls, chatflows)
        for spec in plan(args):
            for service in (web, *workers):
                if service is not None and not service.alive():
                    raise RuntimeError(
                        f"{service.name} exited with code {service.popen.returncode}:\n"
                        f"{service.log_tail()}"
                    )
            row = await measure_row(ctx, spec, args)
            rows.append(row)
            print(_row_line(row), flush=True)
    finally:
        for service in (*workers, web):
            if service is not None:
                code = service.stop()
                if code not in (0, -signal.SIGTERM, None):
                    print(f"  {service.name} exited with code {code} (see {service.log_path})")
        shutil.rmtree(home, ignore_errors=True)
    return rows


# --- the whole run -----------------------------------------------------------------------------


def log_problems(out: Path) -> dict[str, list[str]]:
    """Return, per log file, the first lines that look like problems (and how many there were)."""
    found: dict[str, list[str]] = {}
    for path in sorted(out.glob("*.log")):
        lines = [
            line.strip()
            for line in path.read_text(errors="replace").splitlines()
            if LOG_PROBLEM.search(line)
        ]
        if lines:
            unique = list(dict.fromkeys(lines))
            found[path.name] = unique[:10] + (
                [f"… {len(lines)} problem lines in all"] if len(lines) > 10 else []
            )
    return found


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 1024**3
    return f"{psutil.cpu_count()} CPUs {model}, {memory:.0f} GB".replace("  ", " ")


def _max_connections(admin_url: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def write_outputs(
    args: argparse.Namespace,
    argv: Sequence[str],
    rows: list[report.RowResult],
    failures: list[str],
    started: float,
) -> None:
    """Write results.json, results.md and bench.png; print the table."""
    out: Path = args.out
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(["python -m bench.run", *argv]),
            "machine": _machine(),
            "python": sys.version.split()[0],
            "git": _git(),
            "modes": args.modes,
            "requests": args.requests,
            "tokens": args.tokens,
            "delay_ms": args.delay_ms,
            "worker_concurrency": args.worker_concurrency,
            "workers": args.workers,
            "postgres_max_connections": _max_connections(args.postgres),
            "duration_s": round(time.perf_counter() - started, 1),
        },
        "rows": [row.to_json() for row in rows],
        "targets": report.check_targets(rows),
        "flowise_3_1_4_queue": [
            {"kind": kind, "concurrency": c, **values}
            for (kind, c), values in report.FLOWISE_REFERENCE.items()
        ],
        "log_problems": log_problems(out),
        "failures": failures,
    }
    report.write_json(results, out / "results.json")
    markdown = report.markdown_report(results, rows)
    if failures:
        markdown += "\n## Failures\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    (out / "results.md").write_text(markdown)
    if rows:
        report.plot(rows, out / "bench.png")
    print("\n" + markdown)
    print(f"Wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bench.png'}, logs.")


async def bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start the mock models, run every mode, write the results; return the exit code."""
    started = time.perf_counter()
    out: Path = args.out
    rows: list[report.RowResult] = []
    failures: list[str] = []
    mocks: dict[str, Service] = {}
    mock_urls: dict[str, str] = {}
    try:
        for name, delay in (("delay", args.delay_ms), ("nodelay", 0.0)):
            port = free_port()
            mocks[name] = spawn(
                f"mock LLM ({name})",
                [PYTHON, "-m", "bench.mock_llm", "--port", str(port), "--tokens",
                 str(args.tokens), "--delay-ms", str(delay)],
                os.environ,
                out / f"mock-{name}.log",
            )  # fmt: skip
            mock_urls[name] = f"http://127.0.0.1:{port}/v1"
        for name, service in mocks.items():
            await wait_ready(service, mock_urls[name].removesuffix("/v1") + "/healthz")
        print(
            f"mock models: {mock_urls['delay']} ({args.tokens} tokens x {args.delay_ms:g} ms), "
            f"{mock_urls['nodelay']} (no delay); {len(plan(args))} rows per mode, "
            f"{args.requests} predictions each"
        )
        for mode in args.modes:
            try:
                rows += await run_mode(mode, args, mocks, mock_urls)
            except Exception as exc:
                failures.append(f"{mode} mode: {type(exc).__name__}: {exc}")
                print(f"  {mode} mode FAILED: {type(exc).__name__}: {exc}")
    finally:
        for service in mocks.values():
            service.stop()
        write_outputs(args, argv, rows, failures, started)
    bad = failures or any(r.errors for r in rows)
    return 1 if bad else 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _lock() -> Any:
    """Hold a machine-wide lock: two runs would drop each other's database and Redis data."""
    path = Path(tempfile.gettempdir()) / "flowsite-bench.lock"
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"another benchmark runs on this machine ({path} is locked)") from None
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; every started process group is stopped whatever happens."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit(
            "the benchmark needs matplotlib: .venv/bin/pip install -r requirements/bench.txt"
        )
    lock = _lock()  # noqa: F841 (held until the process exits)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.log"):
        old.unlink()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return asyncio.run(bench(args, argv))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process")
        return 130
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
