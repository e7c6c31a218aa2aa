"""CSV rows, JSON, Rich tables (readable at 80 columns) and the two PNGs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from ppsvd.analysis.metrics import summarize
from ppsvd.analysis.timeline import RunTimeline, SampleSpan, StageTimeline
from ppsvd.bench import report
from ppsvd.bench.records import BenchPlan, BenchResult, BenchRun
from ppsvd.bench.sweep import derive_scaling
from ppsvd.commands import tables
from ppsvd.config import RunConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pipeline(n: int, total: int = 8, samples: int = 4, step_s: float = 0.5, hop_s: float = 0.001) -> RunTimeline:
    """A perfect pipeline: stage k computes sample i during [(i + k) d + k h, (i + k + 1) d + k h]
    where h is the hand-off time: each stage starts a sample the moment it arrives."""
    per, stages = total // n, []
    d = per * step_s
    for k in range(n):
        spans = []
        for i in range(samples):
            start = (i + k) * d + k * hop_s
            span = SampleSpan(index=i, compute_start=start, compute_end=start + d, steps=per)
            if k > 0:
                span.recv_start, span.recv_end, span.arrived = start - hop_s, start, start
            if k < n - 1:
                span.send_start = span.enqueued = start + d
            spans.append(span)
        stages.append(
            StageTimeline(
                stage=k,
                steps=(k * per, (k + 1) * per),
                launched=-3.0,
                ready=-1.0,
                finished=spans[-1].compute_end,
                samples=spans,
            )
        )
    return RunTimeline(
        strategy="pipeline",
        total_steps=total,
        num_samples=samples,
        run_start=-4.0,
        run_end=(samples + n) * 4.0,
        stages=stages,
    )


def data(n: int, total: int = 8, samples: int = 4, step_s: float = 0.5) -> RunTimeline:
    stages = []
    for k in range(n):
        mine = [i for i in range(samples) if i % n == k]
        spans = [
            SampleSpan(index=i, compute_start=j * total * step_s, compute_end=(j + 1) * total * step_s, steps=total)
            for j, i in enumerate(mine)
        ]
        stages.append(
            StageTimeline(
                stage=k, steps=(0, total), launched=-3.0, ready=-1.0, finished=spans[-1].compute_end, samples=spans
            )
        )
    return RunTimeline(
        strategy="data", total_steps=total, num_samples=samples, run_start=-4.0, run_end=20.0, stages=stages
    )


def bench_runs(tmp_path: Path) -> list[BenchRun]:
    runs = []
    for n in (1, 2, 4):
        for strategy, build in (("pipeline", pipeline), ("data", data)):
            timeline = build(n)
            run_dir = tmp_path / f"{n}-{strategy}"
            timeline.save(run_dir / "timeline.json")
            metrics = summarize(timeline)
            runs.append(
                BenchRun(
                    gpu_count=n,
                    strategy=strategy,
                    status="ok",
                    run_dir=str(run_dir),
                    wall_s=metrics.wall_s,
                    metrics=metrics,
                )
            )
    runs.append(
        BenchRun(
            gpu_count=7,
            strategy="pipeline",
            status="failed",
            wall_s=2.0,
            error="stage 3 failed: CUDA out of memory",
            failed_stage=3,
        )
    )
    derive_scaling(runs)
    return runs


def render(renderable, width: int = 80) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


# -- CSV and JSON -------------------------------------------------------------------------------


def test_csv_starts_with_the_guides_columns(tmp_path):
    text = report.csv_text(bench_runs(tmp_path))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].startswith("gpu_count,total_time_sec,per_sample_sec,strategy,partition,status,")
    assert list(rows[0]) == report.CSV_COLUMNS
    assert len(rows) == 7
    two = rows[2]  # 2 GPUs, pipeline
    assert (two["gpu_count"], two["strategy"], two["status"], two["steps_per_gpu"]) == ("2", "pipeline", "ok", "4")
    assert float(two["speedup"]) == 2.0 and float(two["efficiency"]) == 1.0
    assert two["stage_busy"].count(";") == 1 and two["hop_ms"] == "1.0"
    failed = rows[-1]
    assert failed["status"] == "failed" and failed["total_time_sec"] == "" and "out of memory" in failed["error"]


def test_write_tables_is_atomic_and_complete(tmp_path):
    plan = BenchPlan(base=RunConfig.from_options(), gpu_counts=(1, 2, 4, 7), strategies=("pipeline", "data"))
    result = BenchResult(plan=plan, results_dir=tmp_path / "out", runs=bench_runs(tmp_path), environment={"x": 1})
    report.write_tables(result)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["benchmark_results.csv", "benchmark_results.json"]  # no temporary files left


# -- tables -------------------------------------------------------------------------------------


def test_summary_table_pipeline(tmp_path):
    text = render(tables.summary_table(summarize(pipeline(4))))
    assert "pipeline · 4 stages · T=8 · 4/4 samples" in text
    assert "1.00 ms" in text  # hand-off stage 0 -> 1
    assert "4.00× on 4, efficiency 100.0%" in text and "estimated from this run's costs" in text
    assert "…" not in text  # nothing cut at 80 columns


def test_summary_table_shows_the_plan_beside_the_measurement(tmp_path):
    timeline = pipeline(4)
    timeline.partition, timeline.costs = "auto", {"step_s": 0.004, "source": "test"}
    text = render(tables.summary_table(summarize(timeline)))
    assert "planned" in text and "planned samples/s" in text and "of plan" in text
    assert "auto: 2+2+2+2" in text and "step 4 ms" in text
    assert "…" not in text


def test_summary_table_data(tmp_path):
    text = render(tables.summary_table(summarize(data(2))))
    assert "data · 2 workers" in text and "samples/s (whole run)" in text and "hand-off" not in text


def test_sweep_tables_fit_80_columns(tmp_path):
    runs = bench_runs(tmp_path)
    for table in (tables.bench_table(runs), tables.detail_table(runs), tables.comparison_table(runs)):
        text = render(table)
        assert "…" not in text, text
        assert max(len(line) for line in text.splitlines()) <= 80
    scaling = render(tables.bench_table(runs))
    assert "failed" in scaling and "2.00×" in scaling
    compare = render(tables.comparison_table(runs))
    assert "pipeline vs data" in compare


def test_no_comparison_without_both_strategies(tmp_path):
    runs = [r for r in bench_runs(tmp_path) if r.strategy == "pipeline"]
    assert tables.comparison_table(runs) is None


# -- plots --------------------------------------------------------------------------------------


def test_plots_are_pngs(tmp_path):
    runs = [r for r in bench_runs(tmp_path) if r.ok]
    report.plot_scaling(runs, tmp_path / "throughput.png", title="test")
    report.plot_timeline(pipeline(4), tmp_path / "timeline.png", title="test")
    report.plot_timeline(data(2), tmp_path / "data.png", title="test")
    for name in ("throughput.png", "timeline.png", "data.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_write_plots_picks_the_widest_pipeline(tmp_path):
    runs = bench_runs(tmp_path)
    assert report.timeline_run([r for r in runs if r.ok]).gpu_count == 4
    plan = BenchPlan(base=RunConfig.from_options(), gpu_counts=(1, 2, 4, 7), strategies=("pipeline", "data"))
    result = BenchResult(plan=plan, results_dir=tmp_path / "out", runs=runs)
    report.write_plots(result)
    assert set(result.files) == {"throughput_png", "timeline_png"}


@pytest.mark.parametrize("value, expected", [(None, ""), (1.0, "1.0"), (1 / 3, "0.333333")])
def test_csv_numbers(value, expected):
    assert report._num(value) == expected
