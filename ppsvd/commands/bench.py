"""`ppsvd bench`: the original guide's benchmark.sh as one command (a fresh launch per GPU count).

Importing this module imports neither torch nor matplotlib (the workers and the plots do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ppsvd import api
from ppsvd.bench.defaults import BENCH_COOLDOWN_S, BENCH_NUM_SAMPLES, BENCH_SEED
from ppsvd.commands import tables
from ppsvd.commands.options import (
    FLAG,
    Compile,
    Debug,
    DecodeMs,
    Device,
    Dtype,
    EncodeMs,
    LatentShape,
    NoProgress,
    NumSamples,
    OutputDir,
    Seed,
    StepMs,
    Timeout,
    TotalSteps,
    Transport,
    Weights,
)
from ppsvd.config import DEFAULT_PARTITION, DEFAULT_TOTAL_STEPS
from ppsvd.console import err, notice, out

NAME = "bench"

Gpus = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="GPU counts to run, e.g. 1,2,4,7 (one fresh launch each). Default: the benchmark's 1,2,4,7 that fit the "
        "machine.",
    ),
]
Strategies = Annotated[
    str,
    typer.Option("--strategy", help="pipeline, data, or pipeline,data to run data parallelism as the baseline too."),
]
Partitions = Annotated[
    str,
    typer.Option(
        "--partition", help="auto, even, or even,auto to compare the even split with the cost-aware one at every count."
    ),
]
Cooldown = Annotated[
    float, typer.Option("--cooldown", help="Seconds to wait between runs (the benchmark's GPU cool-down).")
]
FailFast = Annotated[
    bool, typer.Option("--fail-fast", help="Stop at the first failed run instead of going on.", **FLAG)
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model-id",
        "--model",
        help="Hub id or local directory, 'tiny' or 'synthetic'. Default: synthetic on --device cpu, "
        "stabilityai/stable-video-diffusion-img2vid-xt on CUDA.",
    ),
]


def command(
    gpus: Gpus = None,
    strategy: Strategies = "pipeline",
    partition: Partitions = DEFAULT_PARTITION,
    model: Model = None,
    weights: Weights = "pretrained",
    total_steps: TotalSteps = DEFAULT_TOTAL_STEPS,
    latent_shape: LatentShape = None,  # type: ignore[assignment]  # None: the benchmark's, or tiny's own
    num_samples: NumSamples = BENCH_NUM_SAMPLES,
    seed: Seed = BENCH_SEED,
    transport: Transport = None,
    device: Device = None,
    dtype: Dtype = None,
    step_ms: StepMs = 0.0,
    encode_ms: EncodeMs = 0.0,
    decode_ms: DecodeMs = 0.0,
    timeout: Timeout = 600.0,
    compile: Compile = False,
    cooldown: Cooldown = BENCH_COOLDOWN_S,
    fail_fast: FailFast = False,
    output_dir: OutputDir = Path("ppsvd-bench"),
    no_progress: NoProgress = False,
    debug: Debug = False,
) -> None:
    """Measure scaling over GPU counts: a fresh launch per count, CSV + JSON + plots + table.

    Defaults are the benchmark's: --total-steps 28 --num-samples 10 --seed 42
    --latent-shape 1 4 14 64 64, 5 s between runs. Writes benchmark_results.csv (the benchmark's
    columns first), benchmark_results.json, throughput.png and timeline.png.
    On a machine without GPUs: ppsvd bench --device cpu --gpus 1,2,4 --step-ms 20
    """
    observer = _RichObserver() if not no_progress else _PlainObserver()
    with observer:
        result = api.benchmark(
            gpus=gpus,
            strategy=strategy,
            partition=partition,
            model_id=model,
            weights=weights,
            total_steps=total_steps,
            latent_shape=latent_shape,
            num_samples=num_samples,
            seed=seed,
            transport=transport,
            device=device,
            dtype=dtype,
            step_ms=step_ms,
            encode_ms=encode_ms,
            decode_ms=decode_ms,
            timeout=timeout,
            compile=compile,
            cooldown=cooldown,
            fail_fast=fail_fast,
            output_dir=output_dir,
            debug=debug,
            observer=observer,
        )
    _print_result(result)
    if result.failed:
        raise typer.Exit(1)


def _header(plan) -> str:
    base = plan.base
    return (
        f"[bold]ppsvd bench[/]: GPUs {','.join(map(str, plan.gpu_counts))} × {','.join(plan.strategies)} · "
        f"partition {','.join(plan.partition_modes)} · "
        f"model {base.model.model} on {base.model.device} · T={base.job.total_steps} · {base.job.num_samples} samples "
        f"· seed {base.job.seed} · "
        f"latent {' '.join(map(str, base.job.latent_shape))}"
        + (f" · {base.synthetic.step_ms:g} ms/step" if base.synthetic.step_ms else "")
        + (" · compiled UNet" if base.model.compile else "")
    )


def _print_result(result) -> None:
    """The tables, what failed, and where the files are."""
    out.print(tables.bench_table(result.runs))
    out.print(tables.detail_table(result.runs))
    comparison = tables.comparison_table(result.runs)
    if comparison is not None:
        out.print(comparison)
    for run in result.failed:
        stage = f" (stage {run.failed_stage})" if run.failed_stage is not None else ""
        out.print(f"[red]failed[/] {run.label}{stage}: {run.error}", soft_wrap=True)
    if not any(r.gpu_count == 1 and r.ok for r in result.runs):
        out.print("[yellow]no successful 1-GPU run: speedup and efficiency need one (add 1 to --gpus)[/]")
    for name, path in result.files.items():
        out.print(f"{name:>15}: {path}", soft_wrap=True)


def _describe(run) -> str:
    m = run.metrics
    if not run.ok or m is None:
        return f"[red]✗ {run.label}[/]: failed after {run.wall_s or 0:.1f} s: {run.error}"
    scaling = ""
    if run.speedup is not None:
        scaling = f", {run.speedup:.2f}× ({100 * run.efficiency:.1f}% efficiency)"
    return (
        f"[green]✓ {run.label}[/]: {run.total_time_sec:.2f} s total, {run.per_sample_sec:.3f} s/sample, "
        f"{m.throughput:.3f} samples/s{scaling}"
    )


class _PlainObserver:
    """The sweep's header, then one line per run (for --no-progress, logs and CI)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def planned(self, plan, results_dir) -> None:
        out.print(_header(plan), soft_wrap=True)
        out.print(f"results → {results_dir}", soft_wrap=True)

    def starting(self, position: int, total: int, run) -> None:
        err.print(f"[{position + 1}/{total}] {run.label} ...", markup=False)
        if run.note:
            notice(run.note)

    def cooling(self, seconds: float) -> None:
        pass

    def finished(self, position: int, total: int, run) -> None:
        err.print(_describe(run), soft_wrap=True)


class _RichObserver(_PlainObserver):
    """The sweep's header, then a Rich progress bar over the runs, with a line per finished run above it."""

    def __enter__(self):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            console=err,
        )
        self.task = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def planned(self, plan, results_dir) -> None:
        super().planned(plan, results_dir)
        self.progress.start()  # after the header: the bar stays below it

    def starting(self, position: int, total: int, run) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, description=f"running {run.label}")
        if run.note:
            self.progress.console.print(f"[yellow]note:[/] {run.note}", soft_wrap=True)

    def cooling(self, seconds: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"cooling down {seconds:g} s")

    def finished(self, position: int, total: int, run) -> None:
        self.progress.console.print(_describe(run), soft_wrap=True)
        self.progress.advance(self.task)
