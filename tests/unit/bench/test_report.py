"""The benchmark's report says when the hypervisor took a row's machine."""

from __future__ import annotations

from bench.report import RowResult, check_targets, markdown_costs, markdown_targets


def _row(stolen: float | None) -> RowResult:
    return RowResult(
        mode="queue",
        kind="json",
        concurrency=50,
        requests=500,
        ok=500,
        errors=0,
        error_samples=[],
        warmup_requests=50,
        warmup_errors=0,
        wall_s=3.3,
        throughput=150.0,
        p50_ms=300.0,
        p95_ms=400.0,
        p99_ms=450.0,
        cpu_web_ms_per_pred=2.0,
        cpu_worker_ms_per_pred=3.0,
        cpu_server_ms_per_pred=5.0,
        machine_busy_pct=85.0,
        machine_stolen_pct=stolen,
    )


def _target_line(rows: list[RowResult], target: str) -> str:
    table = markdown_targets(check_targets(rows))
    return next(line for line in table.splitlines() if line.startswith(f"| {target} "))


def test_a_target_measured_on_a_machine_mostly_taken_says_so():
    line = _target_line([_row(stolen=34.4)], "non-streaming C=50 ≥ 160/s")

    assert line == (
        "| non-streaming C=50 ≥ 160/s | 150.0 /s "
        "| **no** (measured with 34 % of the machine stolen) |"
    )
    assert "85 % (34 %)" in markdown_costs([_row(stolen=34.4)])


def test_a_little_stolen_time_is_not_remarked_on():
    line = _target_line([_row(stolen=4.0)], "CPU web+worker ≤ 5 ms/prediction, non-streaming C=50")

    assert line.endswith("| 5.0 ms | yes |")
    assert "85 % (4 %)" in markdown_costs([_row(stolen=4.0)])


def test_results_from_before_stolen_time_was_measured_still_render():
    line = _target_line([_row(stolen=None)], "non-streaming C=50 ≥ 160/s")

    assert line.endswith("| 150.0 /s | **no** |")
    assert "| 85 % |" in markdown_costs([_row(stolen=None)])
