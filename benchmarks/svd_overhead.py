"""What ppsvd's SVD stage model costs over diffusers' own pipeline, on one process (N=1).

Both sides generate the same samples from the same saved tiny SVD (CPU, fp32):
  diffusers  a plain loop of StableVideoDiffusionPipeline(...)(output_type="np") per sample
  ppsvd      SVDStageModel: prepare -> run_steps(all steps) -> finalize per sample
  ppsvd run  the real launcher with --nproc 1: a worker process with its receiver/writer
             threads, MP4 and latent writes, progress reports (per sample after the first,
             from its timeline: 1 / steady-state throughput)
and each side's outputs are checked to be bitwise the other's. Model loading is not timed; one
warm-up sample per side is not timed. The two sides alternate over --repeats rounds so that a
noisy shared machine slows both alike; the best round of each is reported, with the median, in
wall-clock and in process CPU time.

    python benchmarks/svd_overhead.py --samples 4 --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ppsvd.config import TINY_LATENT_SHAPE, RunConfig
from ppsvd.io.images import builtin_image
from ppsvd.models import tiny
from ppsvd.models.svd import SVDStageModel, frames_to_uint8
from ppsvd.planning.steps import partition_steps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--latent-shape", type=int, nargs=5, default=list(TINY_LATENT_SHAPE), metavar=("B", "C", "F", "H", "W")
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared CPU)"
    )
    return parser.parse_args()


def diffusers_loop(pipe, config: RunConfig, indices: range) -> list[tuple[torch.Tensor, np.ndarray]]:
    """The baseline: one pipeline call per sample, seeded seed + index like ppsvd."""
    b, _, f, h, w = config.job.latent_shape
    latents: list[torch.Tensor] = []

    def keep_final_latents(_pipe, i, _t, kwargs):
        if i == config.job.total_steps - 1:
            latents.append(kwargs["latents"])
        return {}

    outputs = []
    for index in indices:
        frames = pipe(
            builtin_image(w * 8, h * 8),
            height=h * 8,
            width=w * 8,
            num_frames=f,
            num_inference_steps=config.job.total_steps,
            fps=config.svd.fps,
            motion_bucket_id=config.svd.motion_bucket_id,
            noise_aug_strength=config.svd.noise_aug_strength,
            min_guidance_scale=config.svd.min_guidance_scale,
            max_guidance_scale=config.svd.max_guidance_scale,
            decode_chunk_size=config.svd.decode_chunk_size,
            num_videos_per_prompt=b,
            generator=torch.Generator("cpu").manual_seed(config.job.seed + index),
            output_type="np",
            callback_on_step_end=keep_final_latents,
        ).frames
        outputs.append((latents[-1], frames_to_uint8(frames)))
    return outputs


def ppsvd_loop(stage: SVDStageModel, indices: range) -> list[tuple[torch.Tensor, np.ndarray]]:
    """ppsvd with one stage: the same calls a one-process run makes per sample."""
    steps = stage.plan.ranges[0]
    outputs = []
    for index in indices:
        result = stage.finalize(stage.run_steps(stage.prepare(index), steps))
        outputs.append((result.latents, result.frames.numpy()))
    return outputs


def timed(fn, *args) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds of this process, result). CPU time is the steadier of the two
    on a shared machine: other processes stretch the wall clock, not our own work."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import StableVideoDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="ppsvd-tiny-") as tmp:
        repo = tiny.save_tiny(Path(tmp) / "tiny-svd")
        config = RunConfig.from_options(
            model=str(repo), total_steps=args.steps, latent_shape=tuple(args.latent_shape), seed=0
        )
        pipe = StableVideoDiffusionPipeline.from_pretrained(repo)
        pipe.set_progress_bar_config(disable=True)
        stage = SVDStageModel(config, partition_steps(args.steps, 1), 0, torch.device("cpu"))

        warm = range(args.samples, args.samples + 1)  # an index outside the timed ones
        diffusers_loop(pipe, config, warm)
        ppsvd_loop(stage, warm)

        samples = range(args.samples)
        times: dict[str, list[tuple[float, float]]] = {"base": [], "ours": []}
        launched: list[float] = []
        for round_ in range(args.repeats):
            *t_base, base_out = timed(diffusers_loop, pipe, config, samples)
            *t_ours, ours_out = timed(ppsvd_loop, stage, samples)
            times["base"].append(tuple(t_base))
            times["ours"].append(tuple(t_ours))
            launched.append(launched_per_sample(config, args, Path(tmp) / "runs" / str(round_)))

    exact = all(torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(base_out, ours_out, strict=True))
    print(
        f"tiny SVD, CPU fp32, {args.threads} thread(s): {args.samples} samples x {args.steps} steps, "
        f"latent shape {' '.join(map(str, args.latent_shape))}, {args.repeats} rounds"
    )
    for clock, column in [("wall", 0), ("cpu", 1)]:
        base = [t[column] for t in times["base"]]
        ours = [t[column] for t in times["ours"]]
        for name, values in [("diffusers pipeline loop", base), ("ppsvd SVDStageModel N=1", ours)]:
            print(
                f"  {clock:4s} {name:24s} best {min(values):7.3f} s  median {statistics.median(values):7.3f} s  "
                f"({min(values) / args.samples:.3f} s/sample)"
            )
        best = (min(ours) / min(base) - 1.0) * 100.0
        median = (statistics.median(ours) / statistics.median(base) - 1.0) * 100.0
        print(f"  {clock:4s} overhead: {best:+.1f}% (best rounds), {median:+.1f}% (medians)")
    print(f"  outputs bitwise equal: {exact}")
    base = [t[0] / args.samples for t in times["base"]]
    print(
        f"  wall ppsvd run --nproc 1 (launcher, writes MP4s): best {min(launched):.3f} s/sample, "
        f"median {statistics.median(launched):.3f} s/sample; overhead "
        f"{(min(launched) / min(base) - 1.0) * 100.0:+.1f}% (best), "
        f"{(statistics.median(launched) / statistics.median(base) - 1.0) * 100.0:+.1f}% (medians)"
    )


def launched_per_sample(config: RunConfig, args: argparse.Namespace, out: Path) -> float:
    """ppsvd end to end through the launcher (one worker); seconds per sample in steady state."""
    from ppsvd.analysis.metrics import summarize
    from ppsvd.analysis.timeline import RunTimeline
    from ppsvd.runtime.launch import launch

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the worker's thread count, as this process's
    run = config.replace(nproc=1, num_samples=args.samples + 1, output_dir=out, show_progress=False)
    result = launch(run, out)
    metrics = summarize(RunTimeline.load(result.run_dir / "timeline.json"), wall_s=result.wall_s)
    return 1.0 / metrics.steady_throughput


if __name__ == "__main__":
    main()
