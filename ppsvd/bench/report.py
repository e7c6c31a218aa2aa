"""The sweep's files: benchmark CSV and JSON, throughput and timeline PNGs (the Rich tables are in
ppsvd.commands.tables).

Every file goes through ppsvd.io.atomic's atomic writes. matplotlib (Agg backend) is imported only
inside the plotting functions, so importing this module stays cheap.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ppsvd.analysis.metrics import RunMetrics, steps_per_gpu, summarize
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.bench.defaults import BENCH_COLUMNS
from ppsvd.bench.records import STATUS_SKIPPED, BenchResult, BenchRun
from ppsvd.io.atomic import write_json_atomic, write_text_atomic, write_with

CSV_NAME = "benchmark_results.csv"
JSON_NAME = "benchmark_results.json"
THROUGHPUT_PNG = "throughput.png"
TIMELINE_PNG = "timeline.png"

# The benchmark's three columns first, in their order; then ppsvd's own.
CSV_COLUMNS = BENCH_COLUMNS + [
    "strategy",
    "partition",
    "status",
    "steps_per_gpu",
    "samples_per_sec",
    "speedup",
    "efficiency",
    "efficiency_basis",
    "predicted_samples_per_sec",
    "vs_plan",
    "steady_samples_per_sec",
    "overall_samples_per_sec",
    "model_load_sec",
    "first_sample_latency_sec",
    "fill_sec",
    "drain_sec",
    "latency_p50_sec",
    "latency_p95_sec",
    "median_step_sec",
    "compute_span_sec",
    "ideal_pipeline_makespan_sec",
    "ideal_data_makespan_sec",
    "stage_sample_sec",
    "stage_predicted_sec",
    "stage_busy",
    "stage_waiting",
    "hop_ms",
    "note",
    "error",
    "run_dir",
]

STRATEGY_COLORS = {"pipeline": "tab:blue", "data": "tab:orange"}
PARTITION_COLORS = {"even": "tab:blue", "auto": "tab:green"}
# Thin bars in the timeline, in colours the samples' tab10 palette does not use.
WAITING_COLOR = "0.82"
BLOCKED_COLOR = "black"


# -- number formatting ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 6) -> str:
    """A CSV number: rounded, no trailing noise; empty for None."""
    if value is None:
        return ""
    return repr(round(value, digits))


def _list(values: Iterable[float | None], digits: int = 4) -> str:
    """Per-stage values in one CSV field, ';'-separated (no quoting needed)."""
    return ";".join("" if v is None else repr(round(v, digits)) for v in values)


# -- CSV and JSON ------------------------------------------------------------------------------


def csv_row(run: BenchRun) -> dict[str, str]:
    m = run.metrics
    row = {
        "gpu_count": str(run.gpu_count),
        "total_time_sec": _num(run.total_time_sec),
        "per_sample_sec": _num(run.per_sample_sec),
        "strategy": run.strategy,
        "partition": run.partition,
        "status": run.status,
        "speedup": _num(run.speedup, 4),
        "efficiency": _num(run.efficiency, 4),
        "efficiency_basis": run.efficiency_basis,
        "note": run.note or "",
        "error": run.error or "",
        "run_dir": run.run_dir or "",
    }
    if m is not None:
        hop_ms = [h.median_s * 1000 for h in m.hops]
        row.update(
            {
                "steps_per_gpu": steps_per_gpu(m.steps_per_stage),
                "samples_per_sec": _num(m.throughput),
                "steady_samples_per_sec": _num(m.steady_throughput),
                "overall_samples_per_sec": _num(m.overall_throughput),
                "predicted_samples_per_sec": _num(m.predicted_throughput),
                "vs_plan": _num(m.vs_plan, 4),
                "model_load_sec": _num(m.model_load_s),
                "first_sample_latency_sec": _num(m.first_sample_latency_s),
                "fill_sec": _num(m.fill_s),
                "drain_sec": _num(m.drain_s),
                "latency_p50_sec": _num(m.latency_p50_s),
                "latency_p95_sec": _num(m.latency_p95_s),
                "median_step_sec": _num(m.median_step_s),
                "compute_span_sec": _num(m.compute_span_s),
                "ideal_pipeline_makespan_sec": _num(m.ideal_pipeline_makespan_s),
                "ideal_data_makespan_sec": _num(m.ideal_data_makespan_s),
                "stage_sample_sec": _list([st.median_sample_s for st in m.stages]),
                "stage_predicted_sec": _list([st.predicted_sample_s for st in m.stages]),
                "stage_busy": _list(m.busy_fracs),
                "stage_waiting": _list(m.waiting_fracs),
                "hop_ms": _list(hop_ms, 3),
            }
        )
    return {col: row.get(col, "") for col in CSV_COLUMNS}


def csv_text(runs: Iterable[BenchRun]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        if run.status != STATUS_SKIPPED:  # runs never attempted (fail-fast) are only in the JSON
            writer.writerow(csv_row(run))
    return buffer.getvalue()


def bench_json(result: BenchResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "ppsvd_benchmark": 1,
        "created": result.created,
        "argv": result.argv,
        "config": plan.base.to_json(),
        "sweep": {
            "gpu_counts": list(plan.gpu_counts),
            "strategies": list(plan.strategies),
            "partitions": list(plan.partition_modes),
            "cooldown_s": plan.cooldown_s,
            "fail_fast": plan.fail_fast,
        },
        "environment": result.environment,
        "csv_columns": CSV_COLUMNS,
        "files": result.files,
        "runs": [run.to_json() for run in result.runs],
    }


def write_tables(result: BenchResult) -> None:
    """benchmark_results.csv and benchmark_results.json (rewritten after every run)."""
    csv_path, json_path = result.results_dir / CSV_NAME, result.results_dir / JSON_NAME
    result.files.setdefault("csv", str(csv_path))
    result.files.setdefault("json", str(json_path))
    write_text_atomic(csv_path, csv_text(result.runs))
    write_json_atomic(json_path, bench_json(result))


def write_plots(result: BenchResult) -> None:
    """throughput.png (every successful run) and timeline.png (the widest successful pipeline run)."""
    ok = [r for r in result.runs if r.ok and r.metrics is not None]
    if not ok:
        return
    base = result.plan.base
    what = (
        f"T={base.job.total_steps} steps, {base.job.num_samples} samples, model {base.model.model}, {base.model.device}"
    )
    path = result.results_dir / THROUGHPUT_PNG
    plot_scaling(ok, path, title=f"Throughput vs GPU count ({what})")
    result.files["throughput_png"] = str(path)
    shown = timeline_run(ok)
    if shown is not None and shown.run_dir is not None:
        timeline = RunTimeline.load(Path(shown.run_dir) / "timeline.json")
        path = result.results_dir / TIMELINE_PNG
        plot_timeline(timeline, path, title=f"Timeline: {shown.label} ({what})", metrics=shown.metrics)
        result.files["timeline_png"] = str(path)


def timeline_run(runs: list[BenchRun]) -> BenchRun | None:
    """The run worth drawing: the pipeline run with the most GPUs, else the widest run."""
    pipeline = [r for r in runs if r.strategy == "pipeline"]
    pool = pipeline or runs
    return max(pool, key=lambda r: r.gpu_count) if pool else None


# -- plots -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")  # files only, never a window (and no display needed)
    import matplotlib.pyplot as plt  # heavy: matplotlib

    return plt


def _save(fig, path: Path) -> None:
    def writer(tmp: Path) -> None:
        fig.savefig(tmp, format="png", bbox_inches="tight")

    write_with(Path(path), writer)


def plot_scaling(runs: list[BenchRun], path: Path, *, title: str) -> None:
    """Samples/s against GPU count, in two panels.

    Left, the scaling the benchmark asks about: one curve per strategy at its headline rate
    (pipeline: steady state; data: whole run), the speedup at each point, and the ideal line
    N x the 1-GPU rate. Right, the whole job, like for like: S / work time (fill and drain
    included, model load excluded) as solid lines, and the benchmark's S / total_time_sec (process
    start and model load included) dotted.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110)
    counts = sorted({r.gpu_count for r in runs})
    strategies = [s for s in ("pipeline", "data") if any(r.strategy == s for r in runs)]
    baseline = _baseline_rate(runs)
    if baseline is not None:
        xs = list(range(1, max(counts) + 1))
        left.plot(xs, [n * baseline for n in xs], ls="--", color="0.45", lw=1.2, label="ideal: N × 1-GPU rate")
    for strategy, partition in _curves(runs, strategies):
        mine = sorted(
            (
                r
                for r in runs
                if r.strategy == strategy
                and r.throughput
                and (partition is None or r.partition == partition or r.gpu_count == 1)
            ),
            key=lambda r: r.gpu_count,
        )
        if not mine:
            continue
        color = PARTITION_COLORS.get(partition) if partition else STRATEGY_COLORS.get(strategy, None)
        what = "steady state" if strategy == "pipeline" else "whole run"
        if partition:  # several splits compared: one curve each, sharing the 1-GPU run
            what += f", --partition {partition}"
        xs = [r.gpu_count for r in mine]
        left.plot(xs, [r.throughput for r in mine], marker="o", lw=2.2, color=color, label=f"{strategy} ({what})")
        for r in mine:
            if r.speedup is not None:
                left.annotate(
                    f"{r.speedup:.2f}×",
                    (r.gpu_count, r.throughput),
                    textcoords="offset points",
                    xytext=(8, -12 if strategy == "data" else -4),
                    fontsize=8,
                    color=color,
                )
        work = [(r.gpu_count, r.metrics.overall_throughput) for r in mine if r.metrics.overall_throughput]
        if work:
            right.plot(
                *zip(*work, strict=True),
                marker="o",
                lw=2.2,
                color=color,
                label=f"{strategy}{' ' + partition if partition else ''}: samples / work time",
            )
        end_to_end = [(r.gpu_count, r.metrics.num_samples / r.total_time_sec) for r in mine if r.total_time_sec]
        if end_to_end:
            right.plot(
                *zip(*end_to_end, strict=True),
                marker=".",
                ls=":",
                lw=1.4,
                color=color,
                label=f"{strategy}{' ' + partition if partition else ''}: samples / total_time_sec",
            )
    for ax, name in ((left, "scaling (speedup vs 1 GPU)"), (right, "the whole job of S samples")):
        ax.set_xticks(counts)
        ax.set_xlim(0.5, max(counts) + 0.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("GPUs (pipeline stages / data-parallel workers)")
        ax.set_ylabel("samples per second")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _curves(runs: list[BenchRun], strategies: list[str]) -> list[tuple[str, str | None]]:
    """(strategy, partition) per curve: one per strategy, and one per partition for a pipeline
    when the sweep compared partitions (--partition even,auto)."""
    curves: list[tuple[str, str | None]] = []
    for strategy in strategies:
        compared = [r.partition for r in runs if r.strategy == strategy and r.show_partition and r.gpu_count > 1]
        if strategy == "pipeline" and compared:
            curves += [(strategy, p) for p in dict.fromkeys(compared)]
        else:
            curves.append((strategy, None))
    return curves


def _baseline_rate(runs: list[BenchRun]) -> float | None:
    """The 1-GPU rate the ideal line scales: the pipeline's (steady), else the data run's."""
    ones = sorted(
        (r for r in runs if r.gpu_count == 1 and r.metrics is not None), key=lambda r: r.strategy != "pipeline"
    )
    return ones[0].metrics.throughput if ones else None


def plot_timeline(timeline: RunTimeline, path: Path, *, title: str, metrics: RunMetrics | None = None) -> None:
    """Stages (rows) x time: a coloured bar per sample computed, grey where a stage waited for
    input, black where it was blocked on a full send queue; fill, steady state and drain shaded."""
    from matplotlib.patches import Patch  # heavy: matplotlib

    plt = _pyplot()
    metrics = metrics or summarize(timeline)
    stages = timeline.stages
    starts = [sp.compute_start for st in stages for sp in st.samples]
    if not starts:
        return
    t0 = min(starts)
    end = max(sp.compute_end for st in stages for sp in st.samples)
    span = max(end - t0, 1e-9)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.55 * len(stages)), dpi=120)
    cmap = plt.get_cmap("tab10")
    for row, st in enumerate(stages):
        for sp in st.samples:
            if sp.recv_start is not None and sp.recv_end is not None and sp.recv_end > sp.recv_start:
                ax.barh(row, sp.recv_end - sp.recv_start, left=sp.recv_start - t0, height=0.3, color=WAITING_COLOR)
            if sp.send_start is not None and sp.enqueued is not None and sp.enqueued > sp.send_start:
                ax.barh(row, sp.enqueued - sp.send_start, left=sp.send_start - t0, height=0.3, color=BLOCKED_COLOR)
            width = sp.compute_end - sp.compute_start
            ax.barh(
                row,
                width,
                left=sp.compute_start - t0,
                height=0.62,
                color=cmap(sp.index % 10),
                edgecolor="white",
                lw=0.5,
            )
            if width > 0.025 * span:
                ax.text(
                    sp.compute_start - t0 + width / 2,
                    row,
                    str(sp.index),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
    legend = [Patch(color=cmap(0), label="computing (colour and number = sample)")]
    if timeline.strategy == "pipeline" and len(stages) > 1:
        legend.append(Patch(color=WAITING_COLOR, label="waiting for input"))
        legend.append(Patch(color=BLOCKED_COLOR, label="blocked on a full send queue"))
        fill_end = metrics.fill_s
        # Stages that become ready late can make fill and drain overlap (no steady state):
        # shade without overlap, the drain starting no earlier than the pipeline is full.
        drain_start = max(fill_end, (end - t0) - (metrics.drain_s or 0.0))
        phases = [
            (0.0, fill_end, "#f4a259", "fill"),
            (fill_end, drain_start, "#8cc084", "steady state"),
            (drain_start, end - t0, "#7fb3d5", "drain"),
        ]
        for lo, hi, color, name in phases:
            if hi > lo:
                ax.axvspan(lo, hi, color=color, alpha=0.15, lw=0)
                ax.text((lo + hi) / 2, -0.75, name, ha="center", va="bottom", fontsize=8, color="0.25")
        legend.append(Patch(color="#8cc084", alpha=0.3, label="phases: fill / steady state / drain"))
    unit = "stage" if timeline.strategy == "pipeline" else "worker"
    ax.set_yticks(range(len(stages)))
    ax.set_yticklabels([f"{unit} {st.stage}\nsteps {st.steps[0]}–{st.steps[1] - 1}" for st in stages], fontsize=8)
    ax.set_ylim(len(stages) - 0.4, -0.95)  # stage 0 on top, room for the phase names
    ax.set_xlim(-0.02 * span, span * 1.02)
    ax.set_xlabel(f"seconds since the first sample started (model load before that: {metrics.model_load_s:.2f} s)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    # Below the x label in figure coordinates: the same gap whatever the number of stages.
    fig.legend(
        handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(legend), fontsize=8, frameon=False
    )
    _save(fig, path)
    plt.close(fig)
