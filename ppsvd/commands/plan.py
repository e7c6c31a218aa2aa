"""`ppsvd plan`: the split and what it predicts, for a planned run, without running anything."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_LATENT_SHAPE, DEFAULT_PARTITION, DEFAULT_TOTAL_STEPS, RunConfig
from ppsvd.console import out
from ppsvd.errors import ConfigError
from ppsvd.planner import choose_layout, choose_plan, known_costs
from ppsvd.planning.costs import CostModel, forecast
from ppsvd.planning.steps import partition_steps

NAME = "plan"

NProc = Annotated[int, typer.Option("--nproc", help="Stages (one process, one GPU each) to plan for.")]
HandoffMs = Annotated[
    float,
    typer.Option(
        "--handoff-ms",
        help="One hand-off between neighbouring stages, in ms (adds to latency; sets the pace only if above every "
        "stage's time).",
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the plan and its predictions as one JSON object (for scripts).")
]


def command(
    nproc: NProc = 4,
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    num_samples: o.NumSamples = 10,
    partition: o.Partition = DEFAULT_PARTITION,
    costs_from: o.CostsFrom = None,
    step_ms: o.StepMs = 0.0,
    encode_ms: o.EncodeMs = 0.0,
    decode_ms: o.DecodeMs = 0.0,
    stage_speed: o.StageSpeed = None,
    handoff_ms: HandoffMs = 0.0,
    cfg_half_ms: o.CfgHalfMs = None,
    decode_chunk_size: Annotated[
        int | None,
        typer.Option(
            "--decode-chunk-size",
            help="Frames decoded at a time (where a guidance pair can split the decode). Default: all.",
        ),
    ] = None,
    latent_shape: o.LatentShape = DEFAULT_LATENT_SHAPE,
    goal: o.Goal = "throughput",
    as_json: Json = False,
) -> int:
    """Show how a run would split its steps and what that predicts, without running it.

    Costs come from a finished run (--costs-from RUN_DIR, what its timeline.json measured) or
    from numbers (--step-ms, --encode-ms, --decode-ms, --stage-speed; the H200 profile of SVD-XT
    at 14 frames 512x512 is --step-ms 165 --encode-ms 65 --decode-ms 490). Shows the partition,
    each stage's predicted time per sample, the bottleneck, throughput, speedup and efficiency
    against one GPU, and the makespan of --num-samples as a pipeline and data-parallel. Then
    every layout of --nproc processes side by side (pipelines, work-queue data parallelism,
    guidance pairs, hybrids) with its makespan, throughput and per-video latency, best for
    --goal first: what --strategy auto would pick.
    """
    speeds = o.parse_float_list("--stage-speed", stage_speed) if stage_speed else ()
    if costs_from and (step_ms or encode_ms or decode_ms or speeds):
        raise ConfigError(f"--costs-from {costs_from} and explicit costs (--step-ms ...) both given; give one of them")
    if not costs_from and step_ms <= 0:
        raise ConfigError(
            "ppsvd plan needs costs: --costs-from RUN_DIR (a finished run), or --step-ms MS (with --encode-ms, "
            "--decode-ms, --stage-speed)"
        )
    if handoff_ms < 0:
        raise ConfigError(f"--handoff-ms {handoff_ms} is negative; use 0 or more milliseconds")
    # The run's own checks (one line each): sizes that fit, one speed per stage, a usable run directory.
    config = RunConfig.from_options(
        total_steps=total_steps,
        nproc=nproc,
        num_samples=num_samples,
        partition=partition,
        costs_from=costs_from,
        step_ms=step_ms,
        encode_ms=encode_ms,
        decode_ms=decode_ms,
        stage_speed=speeds,
        cfg_half_ms=cfg_half_ms,
        decode_chunk_size=decode_chunk_size,
        latent_shape=tuple(latent_shape),
        goal=goal,
    ).validate()
    if costs_from:
        costs = known_costs(config)
    else:
        costs = CostModel.from_ms(step_ms, encode_ms, decode_ms, speeds, source="as given")
    if handoff_ms:
        costs = CostModel(
            costs.step_s, costs.prepare_s, costs.finalize_s, handoff_ms / 1000, costs.speeds, costs.source
        )
    chosen = forecast(choose_plan(partition, total_steps, nproc, costs), costs, num_samples)
    even = forecast(partition_steps(total_steps, nproc), costs, num_samples)
    _, reason, layouts = choose_layout(config.replace(strategy="auto"), costs)
    if as_json:
        print(
            json.dumps(
                {
                    "partition": partition,
                    "plan": chosen.to_json(),
                    "even": even.to_json(),
                    "layouts": [f.row() for f in layouts],
                    "auto": reason,
                }
            )
        )
        return 0
    _show(partition, chosen, even)
    _show_layouts(layouts, reason, goal)
    return 0


def _show_layouts(layouts, reason: str, goal: str) -> None:
    table = Table(
        title=f"layouts of the same processes · best for --goal {goal} first",
        header_style="bold",
        title_style="bold",
        box=None,
        pad_edge=False,
    )
    for name in ("layout", "", "steps per stage", "makespan s", "samples/s", "latency s"):
        table.add_column(name, justify="left" if name in ("layout", "") else "right")
    for f in layouts:
        table.add_row(
            f.layout.name(),
            f.layout.describe(),
            "+".join(map(str, f.sizes)),
            f"{f.makespan_s:.2f}",
            f"{f.throughput:.4f}",
            f"{f.latency_s:.3f}",
        )
    out.print(table)
    out.print(reason, style="dim", soft_wrap=True)


def _show(partition: str, chosen, even) -> None:
    n = chosen.num_stages
    table = Table(
        title=f"ppsvd plan · {n} stage{'s' if n != 1 else ''} · T={sum(chosen.sizes)} · {partition}",
        header_style="bold",
        title_style="bold",
        box=None,
        pad_edge=False,
    )
    for name in ("stage", "steps", "s/sample", "even split", "s/sample (even)"):
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
    out.print(table)

    def rate(f) -> str:
        return f"{f.throughput:.4f} samples/s, {f.speedup:.2f}× one GPU, efficiency {100 * f.efficiency:.1f}%"

    s = chosen.num_samples
    lines = Table(box=None, show_header=False, pad_edge=False)
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row("costs", chosen.costs.describe())
    lines.add_row("bottleneck", f"stage {chosen.bottleneck}: {chosen.period_s:.3f} s per sample")
    lines.add_row(f"{partition} split", rate(chosen))
    if chosen.sizes != even.sizes:
        lines.add_row("even split", f"{rate(even)} (stage {even.bottleneck} is its bottleneck)")
        lines.add_row("", f"{partition} is {even.period_s / chosen.period_s:.2f}× the even split's throughput")
    lines.add_row("one GPU", f"{1 / chosen.single_s:.4f} samples/s ({chosen.single_s:.3f} s per sample)")
    lines.add_row("latency", f"{chosen.latency_s:.3f} s per sample through every stage")
    pipe, data = chosen.pipeline_makespan_s, chosen.data_makespan_s
    faster = (
        "the same"
        if abs(pipe - data) <= 1e-9 * max(pipe, data)
        else ("pipeline" if pipe < data else "data parallelism")
    )
    lines.add_row(
        f"{s} samples",
        f"pipeline {pipe:.2f} s, data-parallel {data:.2f} s on the same {n} GPUs: {faster} finishes first",
    )
    out.print(lines)
