"""The Python API: `ppsvd.run`, `ppsvd.simulate` and `ppsvd.benchmark`, with the CLI's options.

    import ppsvd

    result = ppsvd.run(["cat.png"], model_id="tiny", device="cpu", nproc=2,
                       num_frames=4, height=64, width=96, num_inference_steps=8)
    result.samples[0].video          # Path of the MP4
    result.samples[0].latents()      # the final latent, torch [B, F, C, H, W]
    result.samples[0].frames()       # the video, uint8 numpy [F, H, W, 3] (read when asked)
    result.metrics.throughput        # steady-state samples/s, from timeline.json

Option names are the CLI's with dashes as underscores (`--num-inference-steps` ->
num_inference_steps; `--model-id` -> model_id), and mean the same; diffusers' names
(num_frames, height, width, num_inference_steps) and the benchmark's (total_steps,
latent_shape) both work. Errors are the exceptions the CLI maps to exit codes: ConfigError and
its subclasses (bad input, exit code 2) before any worker starts, StageFailedError (a stage
failed, 1), Interrupted (a signal, 128 + its number).

    api/options.py     keywords (and the CLI's flags) -> one checked RunConfig
    api/execution.py   the one execute path of every run: resume, --strategy auto, checks,
                       self-launch or torchrun, signals
    api/results.py     RunResult and SampleOutput: a finished run read from its directory

`ppsvd.benchmark` is `ppsvd bench`: the name `ppsvd.bench` is the ppsvd.bench package.
Importing this package imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from ppsvd.api.execution import execute
from ppsvd.api.options import ImageLike, bench_config, explicit_fields, run_config, simulate_config
from ppsvd.api.results import RunResult, SampleOutput
from ppsvd.bench.defaults import BENCH_COOLDOWN_S
from ppsvd.bench.options import bench_device, bench_model, bench_plan
from ppsvd.bench.records import BenchResult
from ppsvd.bench.sweep import SweepObserver, new_results_dir, run_bench

__all__ = ["RunResult", "SampleOutput", "benchmark", "run", "simulate"]


def run(
    images: ImageLike | Iterable[ImageLike] | None = None,
    *,
    resume: str | os.PathLike | None = None,
    **options: Any,
) -> RunResult:
    """Generate videos with Stable Video Diffusion, the steps pipelined over `nproc` processes.

    images: files, directories, globs or http(s) URLs; one video per image unless num_samples
    says otherwise (sample i uses image i mod count). Or inputs=: a CSV / JSON-lines job file,
    or a list of SampleInput / dicts (image, seed, motion_bucket_id, fps, noise_aug_strength).
    Every other keyword is a `ppsvd run` option: model_id, revision, variant, weights,
    num_frames, height, width, num_inference_steps (or total_steps, latent_shape), num_samples,
    seed, fps, video_fps, motion_bucket_id, noise_aug_strength, min_guidance_scale,
    max_guidance_scale, decode_chunk_size, save_frames, save_video, save_latents, nproc,
    transport, device, dtype, output_dir, timeout, strategy, progress, log_format, ...
    The result equals diffusers' StableVideoDiffusionPipeline called with the same arguments.

    resume: a stopped run's directory (as `ppsvd run --resume`): its own settings, and only the
    samples it lacks; keywords given here may change how it runs (nproc, transport, timeout,
    ...), and refuse (ConfigError) where they would change a sample.
    """
    given = explicit_fields({"images": images, **options})
    return execute(run_config(images, **options), resume=resume, explicit=given, command="run")


def simulate(*, resume: str | os.PathLike | None = None, **options: Any) -> RunResult:
    """The pipeline on CPU with the synthetic stand-in model (`ppsvd simulate`): default 4 stages,
    8 samples, 20 ms per step. Keywords are the command's options (nproc, num_samples, step_ms,
    ...); resume as in run()."""
    given = explicit_fields(options)
    return execute(simulate_config(**options), resume=resume, explicit=given, command="simulate")


def benchmark(
    *,
    gpus: str | Sequence[int] | None = None,
    strategy: str | Sequence[str] = "pipeline",
    partition: str | Sequence[str] = "auto",
    cooldown: float = BENCH_COOLDOWN_S,
    fail_fast: bool = False,
    device: str | None = None,
    model_id: str | None = None,
    observer: SweepObserver | None = None,
    **options: Any,
) -> BenchResult:
    """The scaling experiment (`ppsvd bench`): a fresh launch per GPU count (and strategy), then
    benchmark_results.csv/.json and plots in a new folder under output_dir. Returns the sweep's
    BenchResult (runs with their metrics, failed runs, the files written). Keywords are the
    command's options (gpus, strategy, model_id, num_samples, step_ms, device, ...); `observer`
    hears about the plan and each run (the CLI draws its progress with one)."""
    from ppsvd.models.base import preflight  # imports torch: only when a sweep is about to run

    device, available = bench_device(device)
    plan = bench_plan(
        bench_config(device=device, model_id=bench_model(model_id, device), **options),
        gpus=gpus,
        strategy=strategy,
        partition=partition,
        cooldown=cooldown,
        fail_fast=fail_fast,
        gpus_available=available,
    )
    preflight(plan.base)  # model files, shapes: a bad input costs one line, not a sweep of failures
    results_dir = new_results_dir(plan.base.output.output_dir)
    observer = observer or SweepObserver()
    observer.planned(plan, results_dir)
    return run_bench(plan, results_dir, observer=observer)
