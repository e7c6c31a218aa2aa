"""Rich tables for the terminal: the end-of-run summary and the bench sweep's tables.

Presentation only: the numbers come from ppsvd.analysis.metrics and the sweep's records (ppsvd.bench.records).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from ppsvd.analysis.metrics import RunMetrics, steps_per_gpu, summarize
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.bench.records import BenchRun
from ppsvd.config import RunConfig
from ppsvd.console import out
from ppsvd.planning.costs import CostModel


def show_summary(config: RunConfig, run_dir: Path) -> None:
    """A finished run: the per-stage table and its headline numbers, or with --log-format json
    one JSON line (the metrics and the run directory), from its timeline.json."""
    metrics = summarize(RunTimeline.load(Path(run_dir) / "timeline.json"))
    if config.ui.log_format == "json":
        print(json.dumps({"event": "summary", "run_dir": str(run_dir), "metrics": metrics.to_json()}), flush=True)
        return
    out.print(summary_table(metrics))
    out.print(f"outputs: {run_dir}")


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# -- Rich tables -------------------------------------------------------------------------------


def summary_table(metrics: RunMetrics) -> Table:
    """One run at a glance: per stage (steps, busy, waiting, load, hand-off) and overall numbers.

    Shared by `ppsvd run`, `ppsvd simulate` and `ppsvd bench`.
    """
    m = metrics
    pipeline = m.strategy == "pipeline"
    unit = "stage" if pipeline else "worker"
    stages = Table(box=None, header_style="bold", pad_edge=False)
    predicted = any(st.predicted_sample_s is not None for st in m.stages)
    columns = [(unit, "right"), ("steps", "left"), ("samples", "right"), ("s/sample", "right")]
    if predicted:
        columns.append(("planned", "right"))
    columns += [("busy", "right"), ("waiting", "right"), ("load s", "right")]
    for name, justify in columns:
        stages.add_column(name, justify=justify)
    if pipeline:
        stages.add_column("hand-off →", justify="right")
    hops = {h.src: h for h in m.hops}
    for st in m.stages:
        row = [
            str(st.stage),
            f"{st.steps[0]}–{st.steps[1] - 1} ({st.num_steps})",
            str(st.samples),
            _fmt(st.median_sample_s, ".3f"),
        ]
        if predicted:
            row.append(_fmt(st.predicted_sample_s, ".3f"))
        row += [_pct(st.busy_frac), _pct(st.waiting_frac), f"{st.load_s:.2f}"]
        if pipeline:
            hop = hops.get(st.stage)
            row.append(_fmt(hop.median_s * 1000 if hop else None, ".2f", " ms"))
        stages.add_row(*row)

    overall = Table(box=None, show_header=False, pad_edge=False)
    overall.add_column(style="bold")
    overall.add_column()
    wall = _fmt(m.wall_s, ".2f", " s")
    if m.per_sample_s is not None:
        wall += f"  ({m.per_sample_s:.3f} s per sample)"
    overall.add_row("wall time", wall)
    load = _fmt(m.model_load_s, ".2f", " s")
    if m.compile_s is not None:
        load += f"  (of it {m.compile_s:.2f} s compiling the UNet; throughput excludes it)"
    overall.add_row("model load", load)
    overall.add_row("first-sample latency", _fmt(m.first_sample_latency_s, ".3f", " s"))
    overall.add_row("fill / drain", f"{_fmt(m.fill_s, '.3f', ' s')} / {_fmt(m.drain_s, '.3f', ' s')}")
    overall.add_row("latency p50 / p95", f"{_fmt(m.latency_p50_s, '.3f', ' s')} / {_fmt(m.latency_p95_s, '.3f', ' s')}")
    rate_name = "steady samples/s" if pipeline else "samples/s (whole run)"
    overall.add_row(rate_name, _fmt(m.throughput, ".4f"))
    if m.predicted_throughput is not None:
        overall.add_row(
            "planned samples/s", f"{_fmt(m.predicted_throughput, '.4f')}  (measured {_pct(m.vs_plan)} of plan)"
        )
    speedup = (
        f"{_fmt(m.speedup, '.2f', '×')} on {m.num_stages}, efficiency {_pct(m.efficiency)}"
        if m.speedup is not None
        else "—"
    )
    overall.add_row("speedup", speedup)
    overall.add_row("", Text(m.efficiency_basis, style="dim"))
    mode = f"{m.partition_mode}: " if m.partition_mode else ""
    overall.add_row("partition", mode + m.partition)
    if m.planned_costs is not None:
        overall.add_row("planned with", CostModel.from_json(m.planned_costs).describe())

    table = Table(
        title=f"{m.strategy} · {m.num_stages} {unit}{'s' if m.num_stages != 1 else ''} · T={m.total_steps} · "
        f"{m.completed}/{m.num_samples} samples",
        show_header=False,
        box=None,
        title_style="bold",
    )
    table.add_column()
    table.add_row(stages)
    table.add_row("")
    table.add_row(overall)
    return table


def _compact(title: str) -> Table:
    """No vertical rules and one space between columns, so a sweep table fits 80 columns."""
    return Table(
        title=title,
        header_style="bold",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
    )


def _range_pct(values: list[float | None]) -> str:
    """'95%' or '67–95%': the spread of a per-stage fraction."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    lo, hi = round(100 * min(known)), round(100 * max(known))
    return f"{lo}%" if lo == hi else f"{lo}–{hi}%"


def bench_table(runs: list[BenchRun]) -> Table:
    """The sweep's scaling: the benchmark's columns first, then speedup and efficiency vs 1 GPU."""
    table = _compact("ppsvd bench: scaling")
    # Two-line headers keep the table inside 80 columns (what Rich assumes when piped).
    for name in (
        "GPUs",
        "strategy",
        "steps\nper GPU",
        "total s",
        "s per\nsample",
        "samples\nper s",
        "speedup",
        "effi-\nciency",
        "status",
    ):
        table.add_column(name, justify="left" if name in ("strategy", "status") else "right")
    for run in runs:
        m = run.metrics
        status = Text(run.status, style={"ok": "green", "failed": "bold red"}.get(run.status, "dim"))
        if m is None:
            table.add_row(str(run.gpu_count), run.strategy, *["—"] * 6, status)
            continue
        table.add_row(
            str(run.gpu_count),
            run.strategy,
            steps_per_gpu(m.steps_per_stage),
            _fmt(run.total_time_sec, ".2f"),
            _fmt(run.per_sample_sec, ".3f"),
            _fmt(m.throughput, ".3f"),
            _fmt(run.speedup, ".2f", "×"),
            _pct(run.efficiency),
            status,
        )
    return table


def detail_table(runs: list[BenchRun]) -> Table:
    """Where the time went in each successful run: load, first sample, fill, latency, utilisation
    (the spread over stages) and the slowest hop's median hand-off. Drain and more: in the CSV."""
    table = _compact("ppsvd bench: where the time went")
    for name in (
        "GPUs",
        "strategy",
        "load\ns",
        "first\nsample s",
        "fill\ns",
        "latency\np50 s",
        "latency\np95 s",
        "busy",
        "waiting",
        "hop\nms",
    ):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for run in runs:
        m = run.metrics
        if m is None or not run.ok:
            continue
        hop = max((h.median_s for h in m.hops), default=None)
        table.add_row(
            str(run.gpu_count),
            run.strategy,
            _fmt(m.model_load_s, ".2f"),
            _fmt(m.first_sample_latency_s, ".2f"),
            _fmt(m.fill_s, ".2f"),
            _fmt(m.latency_p50_s, ".2f"),
            _fmt(m.latency_p95_s, ".2f"),
            _range_pct(m.busy_fracs),
            _range_pct(m.waiting_fracs),
            _fmt(hop * 1000 if hop is not None else None, ".2f"),
        )
    return table


def comparison_table(runs: list[BenchRun]) -> Table | None:
    """Pipeline vs data parallelism at each GPU count where both ran: the choice a user faces.

    Both do the same job (S samples on N GPUs). 'work s' is the time from the first sample
    started to the last finished (fill and drain included, model load excluded); the ideal
    work times assume the run's median step time. 'faster' compares work times: model load is
    the same for both on GPUs, while on a CPU machine process start-up adds noise to total s.
    """
    by_key = {(r.gpu_count, r.strategy): r for r in runs if r.ok and r.metrics is not None}
    counts = sorted({n for n, _ in by_key if (n, "pipeline") in by_key and (n, "data") in by_key})
    if not counts:
        return None
    table = _compact("pipeline vs data parallelism (same GPUs, same samples)")
    headers = (
        "GPUs",
        "total s\npipeline",
        "total s\ndata",
        "work s\npipeline",
        "work s\ndata",
        "ideal work s\npipeline / data",
        "faster\n(work)",
    )
    for name in headers:
        table.add_column(name, justify="left" if name.startswith("faster") else "right")
    for n in counts:
        p, d = by_key[(n, "pipeline")], by_key[(n, "data")]
        pw, dw = p.metrics.compute_span_s, d.metrics.compute_span_s
        faster = "—"
        if pw and dw:
            ratio = max(pw, dw) / min(pw, dw)
            faster = "same" if ratio < 1.005 else f"{'pipeline' if pw < dw else 'data'} {ratio:.2f}×"
        pm = p.metrics
        table.add_row(
            str(n),
            _fmt(p.total_time_sec, ".2f"),
            _fmt(d.total_time_sec, ".2f"),
            _fmt(pw, ".2f"),
            _fmt(dw, ".2f"),
            f"{_fmt(pm.ideal_pipeline_makespan_s, '.2f')} / {_fmt(pm.ideal_data_makespan_s, '.2f')}",
            faster,
        )
    return table


def verify_table(report) -> Table:
    """`ppsvd verify`: each layout's promise, what it did against diffusers, its speed, pass or fail
    (why a layout failed is printed below the table, in full)."""
    s = report.settings
    threads = report.reference.get("cpu_threads")
    where = f"{s['device']}, {s['dtype']}" + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
    title = (
        f"ppsvd verify · {s['model']}{' (random weights)' if s['weights'] == 'random' else ''} on {where} · "
        f"latent {' '.join(map(str, s['latent_shape']))} · T={s['total_steps']} · {s['num_samples']} samples"
    )
    table = _compact(title)
    compiled = any(r.compiled for r in report.layouts)
    headers = ["layout", "promise", "latents", "frames", "samples\nper s", "vs\ndiffusers"]
    headers += ["compile\ns"] if compiled else []
    for name in [*headers, "result"]:
        right = name.startswith(("samples", "vs", "compile"))
        table.add_column(name, justify="right" if right else "left", no_wrap=name == "layout")
    for r in report.layouts:
        if r.latents_bitwise is None:
            latents = "—"
        else:
            latents = "bitwise" if r.latents_bitwise else f"{r.max_relative_difference:.1e}"
        if r.frames_equal is None:
            frames = "—"
        elif r.max_frame_difference == 0:
            frames = "bitwise"
        else:
            frames = f"±{r.max_frame_difference}" + (" =dec" if r.frames_equal else "")
        promise = "bitwise" if r.bound is None else f"≤ {r.bound:.0e}"
        row = [r.layout, promise, latents, frames, _fmt(r.samples_per_sec, ".3f"), _fmt(r.vs_diffusers, ".2f", "×")]
        row += [_fmt(r.compile_s, ".1f")] if compiled else []
        row.append(Text("✓ pass", style="green") if r.ok else Text("✗ FAIL", style="bold red"))
        table.add_row(*row)
    ref = report.reference
    times = ", ".join(f"{t:.2f}" for t in ref["seconds_per_sample"])
    notes = [
        f"diffusers' StableVideoDiffusionPipeline in this process: {_fmt(ref['samples_per_sec'], '.3f')} samples/s "
        f"(s per sample {times}; the first left out as warm-up).",
        "latents: bitwise, or max |ppsvd - diffusers| / max |diffusers|. frames: ±n the largest pixel difference "
        "to diffusers' frames; =dec: equal to diffusers' decode of the layout's own latents.",
    ]
    notes += [f"✗ {r.layout}: {r.problem}" for r in report.failed]
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table
