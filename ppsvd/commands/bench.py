"""`ppsvd bench`: the guide's benchmark.sh as one command (a fresh launch per GPU count).

Importing this module imports neither torch nor matplotlib; the command imports what it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppsvd.commands.options import (
    Debug,
    Device,
    Dtype,
    LatentShape,
    ModelId,
    NoProgress,
    NumSamples,
    OutputDir,
    Seed,
    StepMs,
    Timeout,
    TotalSteps,
    Transport,
)

NAME = "bench"

Gpus = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="GPU counts to run, e.g. 1,2,4,7 (one fresh launch each). Default: the guide's 1,2,4,7 that fit the machine.",
    ),
]
Strategies = Annotated[
    str,
    typer.Option("--strategy", help="pipeline, data, or pipeline,data to run data parallelism as the baseline too."),
]
Cooldown = Annotated[float, typer.Option("--cooldown", help="Seconds to wait between runs (the guide's GPU cool-down).")]
FailFast = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed run instead of going on.")]
Weights = Annotated[
    str,
    typer.Option("--weights", help="pretrained, or random: the model's architecture with random weights (timing without a download)."),
]


def command(
    gpus: Gpus = None,
    strategy: Strategies = "pipeline",
    model: ModelId = None,  # type: ignore[assignment]  # None: synthetic on CPU, SVD-XT on CUDA
    weights: Weights = "pretrained",
    total_steps: TotalSteps = 28,
    latent_shape: LatentShape = None,  # type: ignore[assignment]  # None: the guide's, or tiny's own
    num_samples: NumSamples = 10,
    seed: Seed = 42,
    transport: Transport = None,
    device: Device = None,
    dtype: Dtype = None,
    step_ms: StepMs = 0.0,
    timeout: Timeout = 600.0,
    cooldown: Cooldown = 5.0,
    fail_fast: FailFast = False,
    output_dir: OutputDir = Path("ppsvd-bench"),
    no_progress: NoProgress = False,
    debug: Debug = False,
) -> None:
    """Measure scaling over GPU counts: a fresh launch per count, CSV + JSON + plots + table.

    Defaults follow the guide's benchmark.sh: --total-steps 28 --num-samples 10 --seed 42
    --latent-shape 1 4 14 64 64, 5 s between runs. Writes benchmark_results.csv (the guide's
    columns first), benchmark_results.json, throughput.png and timeline.png.
    On a machine without GPUs: ppsvd bench --device cpu --gpus 1,2,4 --step-ms 20
    """
    from ppsvd.bench import sweep as bench
    from ppsvd.commands import tables
    from ppsvd.config import (
        DEFAULT_MODEL_ID,
        STRATEGIES,
        SYNTHETIC_MODEL,
        RunConfig,
        default_latent_shape,
        parse_int_list,
    )
    from ppsvd.console import out
    from ppsvd.errors import ConfigError
    from ppsvd.models.base import preflight

    available = bench.visible_gpus() if device != "cpu" else 0
    if device is None:
        if available == 0:
            raise ConfigError(
                "no CUDA GPU is visible on this machine; run the experiment on CPU with "
                "`ppsvd bench --device cpu --step-ms 20` (synthetic model, 20 ms per step like a GPU)"
            )
        device = "cuda"
    if device == "cuda" and available == 0:
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if model is None:
        model = SYNTHETIC_MODEL if device == "cpu" else DEFAULT_MODEL_ID
    if latent_shape is None:
        latent_shape = default_latent_shape(model)
    counts = parse_int_list("--gpus", gpus) if gpus else list(bench.default_gpu_counts(device, available))
    strategies = [s.strip() for s in strategy.split(",") if s.strip()]
    for name in strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategy {strategy!r}: {name!r} is not one of {', '.join(STRATEGIES)}")

    base = RunConfig(
        model=model,
        weights=weights,
        total_steps=total_steps,
        latent_shape=tuple(latent_shape),
        num_samples=num_samples,
        seed=seed,
        transport=transport,
        device=device,
        dtype=dtype,
        step_ms=step_ms,
        timeout_s=timeout,
        output_dir=output_dir,
        debug=debug,
        show_progress=False,
    )
    plan = bench.BenchPlan(
        base=base,
        gpu_counts=tuple(counts),
        strategies=tuple(strategies),
        cooldown_s=cooldown,
        fail_fast=fail_fast,
    ).validate(available if device == "cuda" else None)
    preflight(base)  # model files, shapes: a bad input costs one line, not a sweep of failures

    results_dir = bench.new_results_dir(output_dir)
    shape = " ".join(map(str, base.latent_shape))
    out.print(
        f"[bold]ppsvd bench[/]: GPUs {','.join(map(str, counts))} × {','.join(strategies)} · model {model} on {device} · "
        f"T={total_steps} · {num_samples} samples · seed {seed} · latent {shape}"
        + (f" · {step_ms:g} ms/step" if step_ms else ""),
        soft_wrap=True,
    )
    out.print(f"results → {results_dir}", soft_wrap=True)

    observer = _RichObserver() if not no_progress else _PlainObserver()
    with observer:
        result = bench.run_bench(plan, results_dir, observer=observer)

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
    if result.failed:
        raise typer.Exit(1)


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
    """One line per run (for --no-progress, logs and CI)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def starting(self, position: int, total: int, run) -> None:
        from ppsvd.console import err, notice

        err.print(f"[{position + 1}/{total}] {run.label} ...", markup=False)
        if run.note:
            notice(run.note)

    def cooling(self, seconds: float) -> None:
        pass

    def finished(self, position: int, total: int, run) -> None:
        from ppsvd.console import err

        err.print(_describe(run), soft_wrap=True)


class _RichObserver(_PlainObserver):
    """A Rich progress bar over the runs, with a line per finished run above it."""

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        from ppsvd.console import err

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            console=err,
        )
        self.progress.start()
        self.task = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

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
