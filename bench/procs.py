"""Processes for the benchmark: start in their own session, wait until ready, measure, stop.

Every process is started with `start_new_session=True` (its own process group), logs to a file,
and is registered so that `stop_all()` ends every group, also after Ctrl-C or an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

try:
    import psutil
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "the benchmark needs psutil and matplotlib: .venv/bin/pip install -r requirements/bench.txt"
    ) from exc

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_SECONDS = 40.0

_running: list[Service] = []


def free_port() -> int:
    """Return a TCP port that nothing listens on right now (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One started process (the leader of its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    process: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Return whether the process still runs."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the log file."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`; return the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop within {timeout:g} s: SIGKILL")
        # Whatever is left of the group (children of a process that already exited).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self.log_file.close()
        if self in _running:
            _running.remove(self)
        return self.popen.returncode


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Service:
    """Start `argv` in its own session with stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    log_file.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
    log_file.flush()
    popen = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = Service(name, popen, log_path, log_file)
    _running.append(service)
    return service


def stop_all() -> None:
    """Stop every process still registered, most recently started first."""
    for service in reversed(list(_running)):
        service.stop()


def run_checked(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, timeout: float = 300
) -> str:
    """Run a command to the end in its own session; return stdout, raise with the log on error."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.write(out)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{name} failed with exit code {proc.returncode}:\n{tail}")
    return out.decode()


async def wait_ready(service: Service, url: str, limit: float = 90.0) -> float:
    """Poll `url` until it answers 200; return the seconds it took. Fails if the process exits."""
    started = time.perf_counter()
    last = "no answer yet"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if not service.alive():
                raise RuntimeError(
                    f"{service.name} exited with code {service.popen.returncode} before it was "
                    f"ready ({service.log_path}):\n{service.log_tail()}"
                )
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return time.perf_counter() - started
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.perf_counter() - started > limit:
                raise RuntimeError(
                    f"{service.name} not ready at {url} after {limit:g} s ({last}):\n"
                    f"{service.log_tail()}"
                )
            await asyncio.sleep(0.05)


# --- measurement -------------------------------------------------------------------------------


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds (user + system) of a process, its live descendants and its reaped children."""
    total = 0.0
    for proc in _tree(process):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss_bytes(process: psutil.Process, tree: Sequence[psutil.Process] | None = None) -> int:
    """Resident memory of a process and its live descendants (or of the processes `tree`)."""
    total = 0
    for proc in _tree(process) if tree is None else tree:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def machine_busy_seconds() -> tuple[float, float, float]:
    """Return (busy CPU seconds, total CPU seconds, stolen CPU seconds) of the whole machine since
    boot. Stolen: time the hypervisor ran other machines while this one had work (counted as
    busy); a shared machine's slow hours show there."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total, getattr(t, "steal", 0.0)


class RssSampler:
    """Sample the RSS of some process trees every `interval` seconds; keep the peaks.

    Listing descendants scans /proc (about 5 ms here), so the trees are listed once at the start
    and every `refresh` seconds, not at every sample: the sampler shares the load generator's
    event loop and must not slow it down.
    """

    def __init__(
        self,
        processes: Mapping[str, psutil.Process],
        interval: float = 0.1,
        refresh: float = 5.0,
    ) -> None:
        self.processes = dict(processes)
        self.interval = interval
        self.refresh = refresh
        self.peaks: dict[str, int] = {name: 0 for name in self.processes}
        self._trees: dict[str, list[psutil.Process]] = {}
        self._listed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one sample now."""
        now = time.monotonic()
        if not self._trees or now - self._listed_at > self.refresh:
            self._trees = {name: _tree(p) for name, p in self.processes.items()}
            self._listed_at = now
        for name, process in self.processes.items():
            rss = tree_rss_bytes(process, self._trees[name])
            self.peaks[name] = max(self.peaks[name], rss)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start sampling in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, int]:
        """Stop sampling (after one last sample); return the peaks in bytes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        return dict(self.peaks)
