"""`ppsvd plan`: the split and what it predicts, for a planned run, without running anything."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_LATENT_SHAPE, DEFAULT_PARTITION, DEFAULT_TOTAL_STEPS, RunConfig
from ppsvd.console import count, out, show
from ppsvd.errors import ConfigError
from ppsvd.planner import choose_layout, choose_plan, known_costs
from ppsvd.planning.costs import CostModel, forecast
from ppsvd.planning.layouts import Layout
from ppsvd.planning.steps import partition_steps

NAME = "plan"

NProc = Annotated[
    int, typer.Option("--nproc", help="Processes (one GPU each) to plan for.", rich_help_panel=o.PARALLELISM)
]
HandoffMs = Annotated[
    float,
    typer.Option(
        "--handoff-ms",
        help="One hand-off between neighbouring stages, in ms (adds to latency; sets the pace only if above every "
        "stage's time).",
        rich_help_panel=o.COSTS,
    ),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the plan and its predictions as one JSON object (for scripts).",
        rich_help_panel=o.OUTPUTS,
        **o.FLAG,
    ),
]
# plan's own wording of shared options: it predicts, it generates nothing and measures nothing.
NumSamples = Annotated[
    int, typer.Option("--num-samples", help="Samples the makespans are predicted for.", rich_help_panel=o.GENERATION)
]
CostsFrom = Annotated[
    str | None,
    typer.Option(
        "--costs-from",
        help="A finished run's directory: plan with the costs its timeline.json measured.",
        rich_help_panel=o.COSTS,
    ),
]
StepMs = Annotated[
    float | None,
    typer.Option(
        "--step-ms",
        help="One denoising step in ms (165 for SVD-XT, 14 frames 512x512, on an H200). Without --step-ms or "
        "--costs-from, times are in denoising steps.",
        rich_help_panel=o.COSTS,
        show_default=False,
    ),
]
EncodeMs = Annotated[
    float, typer.Option("--encode-ms", help="Stage 0's image encode per sample, in ms.", rich_help_panel=o.COSTS)
]
DecodeMs = Annotated[
    float, typer.Option("--decode-ms", help="The last stage's VAE decode per sample, in ms.", rich_help_panel=o.COSTS)
]
StageSpeed = Annotated[
    str | None,
    typer.Option(
        "--stage-speed",
        help="Relative speed of each process's device, e.g. 1,1,1,0.5 (mixed GPUs).",
        rich_help_panel=o.COSTS,
    ),
]
CfgHalfMs = Annotated[
    float | None,
    typer.Option(
        "--cfg-half-ms",
        help="One guidance half's step (batch 1) in ms. Default: --step-ms x 114/162 (measured on an H200).",
        rich_help_panel=o.COSTS,
    ),
]
DecodeChunkSize = Annotated[
    int | None,
    typer.Option(
        "--decode-chunk-size",
        help="Frames decoded at a time (where a guidance pair can split the decode). Default: all.",
        rich_help_panel=o.GENERATION,
    ),
]

STEP_UNITS = "denoising steps"
"""What plan's times count when no costs are given: one denoising step = 1 (encode and decode free)."""


def command(
    nproc: NProc = 4,
    strategy: o.Strategy = "pipeline",
    pipeline_stages: o.PipelineStages = None,
    replicas: o.Replicas = None,
    goal: o.Goal = "throughput",
    partition: o.Partition = DEFAULT_PARTITION,
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    num_samples: NumSamples = 10,
    latent_shape: o.LatentShape = DEFAULT_LATENT_SHAPE,
    decode_chunk_size: DecodeChunkSize = None,
    costs_from: CostsFrom = None,
    step_ms: StepMs = None,
    encode_ms: EncodeMs = 0.0,
    decode_ms: DecodeMs = 0.0,
    stage_speed: StageSpeed = None,
    handoff_ms: HandoffMs = 0.0,
    cfg_half_ms: CfgHalfMs = None,
    as_json: Json = False,
) -> int:
    """Show how a run would arrange its processes and split its steps, and what that predicts, without running it.

    Takes run's layout options (--nproc, --strategy pipeline|data|cfg|auto, --pipeline-stages,
    --replicas, --goal, --partition). Costs come from a finished run (--costs-from RUN_DIR, what
    its timeline.json measured) or from numbers (--step-ms, --encode-ms, --decode-ms,
    --stage-speed; the H200 profile of SVD-XT at 14 frames 512x512 is --step-ms 165 --encode-ms
    65 --decode-ms 490); without them, times are counted in denoising steps. For a pipeline:
    the partition, each stage's predicted time per sample, the bottleneck, throughput, speedup
    and efficiency against one GPU, and the makespan of --num-samples as a pipeline and
    data-parallel. Then every layout of --nproc processes side by side (pipelines, work-queue
    data parallelism, guidance pairs, hybrids) with its makespan, throughput and per-video
    latency, best for --goal first: what --strategy auto would pick.
    """
    speeds = o.parse_float_list("--stage-speed", stage_speed) if stage_speed else ()
    given = bool(step_ms or encode_ms or decode_ms or speeds)
    if costs_from and given:
        raise ConfigError(f"--costs-from {costs_from} and explicit costs (--step-ms ...) both given; give one of them")
    if given and not step_ms:
        raise ConfigError("--encode-ms, --decode-ms and --stage-speed go with --step-ms MS (one denoising step)")
    if handoff_ms < 0:
        raise ConfigError(f"--handoff-ms {handoff_ms} is negative; use 0 or more milliseconds")
    # The run's own checks (one line each): sizes that fit, a layout of exactly --nproc processes,
    # one speed per process, a usable run directory.
    config = RunConfig.from_options(
        total_steps=total_steps,
        nproc=nproc,
        num_samples=num_samples,
        strategy=strategy,
        pipeline_stages=pipeline_stages,
        replicas=replicas,
        goal=goal,
        partition=partition,
        costs_from=costs_from,
        step_ms=step_ms or 0.0,
        encode_ms=encode_ms,
        decode_ms=decode_ms,
        stage_speed=speeds,
        cfg_half_ms=cfg_half_ms,
        decode_chunk_size=decode_chunk_size,
        latent_shape=tuple(latent_shape),
    ).validate()
    costs: CostModel | None = None
    if costs_from:
        costs = known_costs(config)
    elif step_ms:
        costs = CostModel.from_ms(step_ms, encode_ms, decode_ms, speeds, source="as given")
    if costs is not None and handoff_ms:
        costs = CostModel(
            costs.step_s, costs.prepare_s, costs.finalize_s, handoff_ms / 1000, costs.speeds, costs.source
        )
    best, reason, layouts = choose_layout(config.replace(strategy="auto"), costs)
    layout = best if strategy == "auto" else config.layout_plan()
    mine = next(f for f in layouts if f.layout == layout)
    if strategy != "auto":
        reason = f"--strategy {strategy}: {_verdict(mine, goal, costs)}; {reason}"
    step_costs = costs if costs is not None else CostModel(1.0, source=f"no costs given: times in {STEP_UNITS}")
    split = None
    if layout == Layout(1, nproc):  # one pipeline of single processes: its split in detail
        chosen = forecast(choose_plan(partition, total_steps, nproc, costs), step_costs, num_samples)
        even = forecast(partition_steps(total_steps, nproc), step_costs, num_samples)
        split = (chosen, even)
    if as_json:
        print(
            json.dumps(
                {
                    "strategy": strategy,
                    "layout": mine.row(),
                    "units": "s" if costs is not None else "steps",
                    "partition": partition,
                    "plan": split[0].to_json() if split else None,
                    "even": split[1].to_json() if split else None,
                    "layouts": [f.row() for f in layouts],
                    "auto": reason,
                }
            )
        )
        return 0
    units = "s" if costs is not None else "steps"
    if split is not None:
        _show(partition, *split, units)
    _show_layouts(layouts, reason, goal, layout, units)
    return 0


def _verdict(mine, goal: str, costs: CostModel | None) -> str:
    """One layout's numbers, as the auto reason states its own."""
    unit = " s" if costs is not None else " step times"
    return (
        f"{mine.layout.describe()} ({mine.layout.name()}) predicts a makespan of {mine.makespan_s:.3g}{unit} and a "
        f"per-video latency of {mine.latency_s:.3g}{unit}"
    )


def _show_layouts(layouts, reason: str, goal: str, chosen, units: str) -> None:
    table = Table(
        title=f"layouts of the same processes · best for --goal {goal} first",
        header_style="bold",
        title_style="bold",
        box=None,
        pad_edge=False,
    )
    rate = "samples/s" if units == "s" else "samples/step"
    for name in ("layout", "", "steps per stage", f"makespan {units}", rate, f"latency {units}"):
        table.add_column(name, justify="left" if name in ("layout", "") else "right")
    for f in layouts:
        table.add_row(
            f.layout.name() + (" ◀" if f.layout == chosen else ""),
            f.layout.describe(),
            "+".join(map(str, f.sizes)),
            f"{f.makespan_s:.2f}",
            f"{f.throughput:.4f}",
            f"{f.latency_s:.3f}",
        )
    show(table)
    out.print(reason, style="dim", soft_wrap=True)


def _show(partition: str, chosen, even, units: str) -> None:
    n = chosen.num_stages
    table = Table(
        title=f"ppsvd plan · {count(n, 'stage')} · T={sum(chosen.sizes)} · {partition}",
        header_style="bold",
        title_style="bold",
        box=None,
        pad_edge=False,
    )
    per = f"{units}/sample"
    for name in ("stage", "steps", per, "even split", f"{per} (even)"):
        table.add_column(name, justify="right")
    start = even_start = 0
    for k, (size, t, even_size, even_t) in enumerate(
        zip(chosen.sizes, chosen.stage_s, even.sizes, even.stage_s, strict=True)
    ):
        mark = " ◀" if k == chosen.bottleneck else ""
        table.add_row(
            str(k),
            f"{start}–{start + size - 1} ({size})",
            f"{t:.3f}{mark}",
            f"{even_start}–{even_start + even_size - 1} ({even_size})",
            f"{even_t:.3f}",
        )
        start, even_start = start + size, even_start + even_size
    show(table)
    unit = " s" if units == "s" else " steps"
    rate_unit = "samples/s" if units == "s" else "samples per step"

    def rate(f) -> str:
        return f"{f.throughput:.4f} {rate_unit}, {f.speedup:.2f}× one GPU, efficiency {100 * f.efficiency:.1f}%"

    s = chosen.num_samples
    lines = Table(box=None, show_header=False, pad_edge=False)
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row("costs", chosen.costs.describe() if units == "s" else chosen.costs.source)
    lines.add_row("bottleneck", f"stage {chosen.bottleneck}: {chosen.period_s:.3f}{unit} per sample")
    lines.add_row(f"{partition} split", rate(chosen))
    if chosen.sizes != even.sizes:
        lines.add_row("even split", f"{rate(even)} (stage {even.bottleneck} is its bottleneck)")
        lines.add_row("", f"{partition} is {even.period_s / chosen.period_s:.2f}× the even split's throughput")
    lines.add_row("one GPU", f"{1 / chosen.single_s:.4f} {rate_unit} ({chosen.single_s:.3f}{unit} per sample)")
    lines.add_row("latency", f"{chosen.latency_s:.3f}{unit} per sample through every stage")
    pipe, data = chosen.pipeline_makespan_s, chosen.data_makespan_s
    faster = (
        "the same"
        if abs(pipe - data) <= 1e-9 * max(pipe, data)
        else ("pipeline" if pipe < data else "data parallelism")
    )
    lines.add_row(
        count(s, "sample"),
        f"pipeline {pipe:.2f}{unit}, data-parallel {data:.2f}{unit} on the same {count(n, 'GPU')}: "
        f"{faster} finishes first",
    )
    show(lines)
