"""Benchmark results: the row record, Flowise's reference figures, targets, markdown and plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NONE = "\u2013"  # an en dash: not measured, or not applicable

KIND_LABELS = {
    "json": "non-streaming",
    "stream": "streaming",
    "nodelay": "model without delay",
}

# Flowise 3.1.4, queue mode (one main + one worker process), mock model 20 tokens x 10 ms,
# chatOpenAI + bufferMemory + conversationChain, 500 predictions per row (issue 8).
# (kind, concurrency) -> figures; latencies in ms; "total" of streaming rows is the p50 to `end`.
FLOWISE_REFERENCE: dict[tuple[str, int], dict[str, float | None]] = {
    ("json", 10): {"throughput": 38.1, "p50": 254, "p95": 307},
    ("json", 50): {"throughput": 80.6, "p50": 594, "p95": 863},
    ("json", 200): {"throughput": 101.5, "p50": 1822, "p95": 2420},
    ("stream", 10): {"throughput": 35.8, "p50": 269, "ttft_p50": 40, "ttft_p95": 85},
    ("stream", 50): {"throughput": 84.8, "p50": 604, "ttft_p50": 264, "ttft_p95": 338},
    ("nodelay", 1): {"throughput": 55.0, "p50": 17, "p95": 28},
    ("nodelay", 50): {"throughput": 113.6, "p50": 442, "p95": 512},
}


@dataclass
class RowResult:
    """One benchmark row: N predictions of one kind at concurrency C against one mode."""

    mode: str
    kind: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    error_samples: list[str]
    warmup_requests: int
    warmup_errors: int
    wall_s: float
    throughput: float  # successful predictions per second of wall time
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None = None  # the slowest one: a stall hides behind p99
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    cpu_web_ms_per_pred: float | None = None
    cpu_worker_ms_per_pred: float | None = None
    cpu_server_ms_per_pred: float | None = None  # web + worker
    cpu_client_ms_per_pred: float | None = None  # this process: the httpx load generator
    cpu_mock_ms_per_pred: float | None = None
    machine_busy_pct: float | None = None  # both cores, everything (Redis, PostgreSQL, …)
    machine_stolen_pct: float | None = None  # of both cores, run by the hypervisor elsewhere
    # CPU cores busy with anything but web, worker, mock and client: PostgreSQL, Redis, the OS,
    # and whatever else runs on the machine (a noisy neighbour shows here).
    other_cores: float | None = None
    db_sessions_per_pred: float | None = None  # new PostgreSQL connections per prediction
    db_transactions_per_pred: float | None = None
    db_connections_peak: int | None = None  # most connections to the database at once
    model_requests_per_pred: float | None = None  # requests the mock model received
    model_connections_per_pred: float | None = None  # TCP connections the mock model accepted
    rss_web_mb: dict[str, float] = field(default_factory=dict)  # idle / peak / after
    rss_worker_mb: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def to_json(self) -> dict[str, Any]:
        """Return the row as a JSON-able dict, with its label and Flowise's figures if any."""
        data = asdict(self)
        data["label"] = self.label
        data["flowise_3_1_4_queue"] = FLOWISE_REFERENCE.get((self.kind, self.concurrency))
        return data


@dataclass(frozen=True)
class Target:
    """One of Flowsite's queue-mode targets."""

    text: str
    kind: str
    concurrency: int
    measured: Callable[[RowResult], float | None]
    limit: float
    at_least: bool  # True: measured >= limit; False: measured <= limit
    unit: str

    def check(self, rows: Sequence[RowResult]) -> dict[str, Any]:
        """Return {target, measured, pass} for the queue-mode row it is about (if measured)."""
        row = next(
            (
                r
                for r in rows
                if r.mode == "queue" and r.kind == self.kind and r.concurrency == self.concurrency
            ),
            None,
        )
        value = self.measured(row) if row is not None else None
        passed = None
        if value is not None and row is not None:
            passed = (value >= self.limit if self.at_least else value <= self.limit) and (
                row.errors == 0
            )
        stolen = row.machine_stolen_pct if row is not None else None
        return {
            "target": self.text,
            "measured": value,
            "unit": self.unit,
            "pass": passed,
            "stolen_pct": stolen,
        }


TARGETS = (
    Target("non-streaming C=50 ≥ 160/s", "json", 50, lambda r: r.throughput, 160, True, "/s"),
    Target("non-streaming C=200 ≥ 200/s", "json", 200, lambda r: r.throughput, 200, True, "/s"),
    Target("streaming C=50 ≥ 160/s", "stream", 50, lambda r: r.throughput, 160, True, "/s"),
    Target("streaming C=50 TTFT p50 ≤ 130 ms", "stream", 50, lambda r: r.ttft_p50_ms, 130, False,
           "ms"),
    Target("streaming C=50 TTFT p95 ≤ 170 ms", "stream", 50, lambda r: r.ttft_p95_ms, 170, False,
           "ms"),
    Target("no-delay model C=1 p50 ≤ 8 ms", "nodelay", 1, lambda r: r.p50_ms, 8, False, "ms"),
    Target("no-delay model C=50 ≥ 225/s", "nodelay", 50, lambda r: r.throughput, 225, True, "/s"),
    Target("CPU web+worker ≤ 5 ms/prediction, non-streaming C=50", "json", 50,
           lambda r: r.cpu_server_ms_per_pred, 5, False, "ms"),
    Target("CPU web+worker ≤ 5 ms/prediction, streaming C=50", "stream", 50,
           lambda r: r.cpu_server_ms_per_pred, 5, False, "ms"),
)  # fmt: skip


# A row measured while the hypervisor took this much of the machine says more about the machine.
STOLEN_WARNING_PCT = 10


def check_targets(rows: Sequence[RowResult]) -> list[dict[str, Any]]:
    """Return every target with what was measured and whether it passed."""
    return [target.check(rows) for target in TARGETS]


# --- markdown ----------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return NONE
    return f"{value:,.{digits}f}".replace(",", " ")


def _rss(values: dict[str, float]) -> str:
    if not values:
        return NONE
    return f"{values['idle']:.0f} / {values['peak']:.0f} / {values['after']:.0f}"


def _flowise(row: RowResult) -> str:
    if row.mode != "queue":
        return ""
    ref = FLOWISE_REFERENCE.get((row.kind, row.concurrency))
    if ref is None:
        return NONE
    text = f"{ref['throughput']:g}/s, p50 {ref['p50']:g}"
    if ref.get("p95") is not None:
        text += f"/{ref['p95']:g}"
    text += " ms"
    if ref.get("ttft_p50") is not None:
        text += f"; TTFT {ref['ttft_p50']:g}/{ref['ttft_p95']:g}"
    return text


def _workers(count: int) -> str:
    return "one `rqworker`" if count == 1 else f"{count} `rqworker` processes"


def markdown_table(rows: Sequence[RowResult]) -> str:
    """Return speed per row as a markdown table, Flowise's figures beside the queue rows."""
    lines = [
        "| mode | row | C | ok / errors | pred/s | latency p50 / p95 / p99 / max ms "
        "| TTFT p50 / p95 ms | Flowise 3.1.4, queue mode |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ttft = NONE if r.ttft_p50_ms is None else f"{_n(r.ttft_p50_ms)} / {_n(r.ttft_p95_ms)}"
        lines.append(
            f"| {r.mode} | {r.label} | {r.concurrency} | {r.ok} / {r.errors} "
            f"| **{_n(r.throughput, 1)}** | {_n(r.p50_ms)} / {_n(r.p95_ms)} / {_n(r.p99_ms)} "
            f"/ {_n(r.max_ms)} "
            f"| {ttft} | {_flowise(r)} |"
        )
    return "\n".join(lines)


def markdown_costs(rows: Sequence[RowResult]) -> str:
    """Return what each row cost (CPU, database, memory) as a markdown table."""
    lines = [
        "| mode | row | C | CPU ms/pred web + worker = **sum** | load generator | mock "
        "| rest of machine, cores | machine busy (stolen) "
        "| PG new connections / transactions per pred, peak connections "
        "| model requests / connections per pred "
        "| RSS MB web idle / peak / after | RSS MB worker idle / peak / after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        worker = NONE if r.cpu_worker_ms_per_pred is None else _n(r.cpu_worker_ms_per_pred, 1)
        cpu = f"{_n(r.cpu_web_ms_per_pred, 1)} + {worker} = **{_n(r.cpu_server_ms_per_pred, 1)}**"
        db = (
            f"{_n(r.db_sessions_per_pred, 2)} / {_n(r.db_transactions_per_pred, 1)}, "
            f"{_n(r.db_connections_peak)}"
        )
        model = f"{_n(r.model_requests_per_pred, 2)} / {_n(r.model_connections_per_pred, 2)}"
        lines.append(
            f"| {r.mode} | {r.label} | {r.concurrency} | {cpu} "
            f"| {_n(r.cpu_client_ms_per_pred, 1)} | {_n(r.cpu_mock_ms_per_pred, 2)} "
            f"| {_n(r.other_cores, 2)} | {_busy(r)} | {db} | {model} "
            f"| {_rss(r.rss_web_mb)} | {_rss(r.rss_worker_mb)} |"
        )
    return "\n".join(lines)


def _busy(r: RowResult) -> str:
    if r.machine_stolen_pct is None:
        return f"{_n(r.machine_busy_pct)} %"
    return f"{_n(r.machine_busy_pct)} % ({_n(r.machine_stolen_pct)} %)"


def markdown_targets(checks: Sequence[dict[str, Any]]) -> str:
    """Return the target checks as a markdown table."""
    lines = ["| target (queue mode) | measured | met |", "| --- | ---: | --- |"]
    for c in checks:
        measured = "not measured" if c["measured"] is None else f"{c['measured']:.1f} {c['unit']}"
        met = {True: "yes", False: "**no**", None: NONE}[c["pass"]]
        stolen = c.get("stolen_pct")
        if stolen is not None and stolen >= STOLEN_WARNING_PCT:
            met += f" (measured with {stolen:.0f} % of the machine stolen)"
        lines.append(f"| {c['target']} | {measured} | {met} |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any], rows: Sequence[RowResult]) -> str:
    """Return the whole results.md."""
    meta = results["meta"]
    parts = [
        "# Flowsite benchmark results",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['machine']} · git {meta['git']}",
        "",
        f"Mock model: {meta['tokens']} tokens, {meta['delay_ms']:g} ms before each "
        f'(rows "model without delay": 0 ms); {meta["requests"]} predictions per row after '
        f"a warm-up; chatOpenAI + bufferMemory + conversationChain on PostgreSQL; one daphne "
        f"web process, and in queue mode {_workers(meta.get('workers', 1))} (WORKER_CONCURRENCY="
        f"{meta['worker_concurrency']}); PostgreSQL max_connections="
        f"{meta.get('postgres_max_connections')}.",
        "",
        markdown_table(rows),
        "",
        "What it cost (CPU per prediction in ms; see bench/README.md for each column):",
        "",
        markdown_costs(rows),
        "",
        markdown_targets(results["targets"]),
        "",
    ]
    errors = [r for r in rows if r.errors or r.warmup_errors]
    if errors:
        parts += ["## Errors", ""]
        for r in errors:
            parts.append(
                f"- {r.mode} {r.label} C={r.concurrency}: {r.errors} errors "
                f"({r.warmup_errors} in warm-up): " + "; ".join(r.error_samples)
            )
        parts.append("")
    problems = results.get("log_problems") or {}
    if any(problems.values()):
        parts += ["## Problems in the server logs", ""]
        for name, lines in problems.items():
            for line in lines:
                parts.append(f"- `{name}`: `{line}`")
        parts.append("")
    return "\n".join(parts)


# --- plot --------------------------------------------------------------------------------------


def plot(rows: Sequence[RowResult], path: Path) -> None:
    """Write throughput and p50 latency vs concurrency (main vs queue, by row kind) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"json": "tab:blue", "stream": "tab:orange", "nodelay": "tab:green"}
    styles = {"main": ("-", "o"), "queue": ("--", "s")}
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(13, 5.2))
    series: dict[tuple[str, str], list[RowResult]] = {}
    for r in rows:
        series.setdefault((r.mode, r.kind), []).append(r)
    for (mode, kind), points in series.items():
        points = sorted(points, key=lambda r: r.concurrency)
        xs = [r.concurrency for r in points]
        line, marker = styles.get(mode, ("-", "o"))
        style = {"color": colors.get(kind), "linestyle": line, "marker": marker}
        label = f"{mode} · {KIND_LABELS.get(kind, kind)}"
        ax_tp.plot(xs, [r.throughput for r in points], label=label, **style)
        ax_lat.plot(xs, [r.p50_ms or 0 for r in points], label=label, **style)
    kinds = {kind for _, kind in series}
    for kind in sorted(kinds):
        refs = sorted((c, v) for (k, c), v in FLOWISE_REFERENCE.items() if k == kind)
        if not refs:
            continue
        xs = [c for c, _ in refs]
        style = {"color": colors.get(kind), "linestyle": ":", "marker": "x", "alpha": 0.6}
        label = f"Flowise 3.1.4 queue · {KIND_LABELS.get(kind, kind)}"
        ax_tp.plot(xs, [v["throughput"] for _, v in refs], label=label, **style)
        ax_lat.plot(xs, [v["p50"] for _, v in refs], label=label, **style)
    for ax, title, unit in (
        (ax_tp, "Throughput", "predictions / s"),
        (ax_lat, "Latency p50 (streaming: to end)", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ticks = sorted({r.concurrency for r in rows} | {c for _, c in FLOWISE_REFERENCE})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
    ax_lat.set_yscale("log")
    ax_tp.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write results.json."""
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
