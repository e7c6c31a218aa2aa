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
(num_frames, height, width, num_inference_steps) and the guide's (total_steps, latent_shape)
both work. Errors are the exceptions the CLI maps to exit codes: ConfigError and its subclasses
(bad input, exit code 2) before any worker starts, StageFailedError (a stage failed, 1).

`ppsvd.benchmark` is `ppsvd bench`: the name `ppsvd.bench` is the ppsvd.bench package.
The CLI's commands build their configs here too (run_config, simulate_config, bench_plan), so
a flag and a keyword can never drift apart. Importing this module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppsvd.bench.sweep import GUIDE_COOLDOWN_S, GUIDE_NUM_SAMPLES, GUIDE_SEED
from ppsvd.config import (
    DEFAULT_LATENT_SHAPE,
    DEFAULT_MODEL_ID,
    SYNTHETIC_MODEL,
    RunConfig,
    SampleInput,
    auto_device,
    env_world,
    resolve_latent_shape,
    resolve_num_samples,
    resolve_total_steps,
)
from ppsvd.errors import ConfigError, StageFailedError

ImageLike = str | os.PathLike
"""An image file, a directory of images, a glob, or an http(s) URL."""


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOutput:
    """One sample of a finished run: where its files are, and its inputs."""

    run_dir: Path
    index: int
    name: str
    """File stem: '<image stem>-s<seed>'."""
    seed: int | None
    image: str | None
    conditioning: dict[str, Any]
    """fps, motion_bucket_id, noise_aug_strength this sample was generated with."""
    videos: tuple[Path, ...]
    """One MP4 per video (more than one when B > 1 in the latent shape)."""
    latents_path: Path | None
    frame_dirs: tuple[Path, ...]

    @property
    def video(self) -> Path | None:
        return self.videos[0] if self.videos else None

    def latents(self):
        """The final latent as saved, torch [B, F, C, H, W] (diffusers' output_type='latent')."""
        if self.latents_path is None:
            raise FileNotFoundError(f"sample {self.index} has no latents (the run was made with save_latents=False)")
        from safetensors.torch import load_file

        return load_file(str(self.latents_path))["latents"]

    def frames(self, video: int = 0):
        """The decoded video as uint8 numpy [F, H, W, 3]: exact from the PNG frames when the run saved
        them (save_frames=True), else decoded from the MP4 (H.264, so close but not exact)."""
        import numpy as np

        if video < len(self.frame_dirs):
            from PIL import Image

            files = sorted(self.frame_dirs[video].glob("*.png"))
            return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        if video < len(self.videos):
            import imageio_ffmpeg

            reader = imageio_ffmpeg.read_frames(str(self.videos[video]))
            meta = next(reader)
            width, height = meta["size"]
            return np.stack([np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader])
        raise FileNotFoundError(f"sample {self.index} has no video {video} (it has {len(self.videos)})")


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, every sample's outputs, the manifest and the metrics."""

    run_dir: Path
    manifest: dict[str, Any]
    samples: tuple[SampleOutput, ...]
    wall_s: float | None = None
    """The whole launch, seconds (process start-up and model load included); None when loaded from disk."""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, wall_s: float | None = None) -> RunResult:
        """Read a finished run directory (manifest.json)."""
        import json

        run_dir = Path(run_dir)
        path = run_dir / "manifest.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no manifest.json; pass the directory of a finished ppsvd run")
        manifest = json.loads(path.read_text())
        samples = tuple(_sample_output(run_dir, entry) for entry in manifest.get("samples", ()))
        return cls(run_dir=run_dir, manifest=manifest, samples=samples, wall_s=wall_s)

    @property
    def config(self) -> RunConfig:
        """The run's configuration (config.json)."""
        if "config" not in self._cache:
            import json

            self._cache["config"] = RunConfig.from_json(json.loads((self.run_dir / "config.json").read_text()))
        return self._cache["config"]

    @property
    def metrics(self):
        """Throughput, latency, fill, drain, utilisation (ppsvd.analysis.metrics.RunMetrics), from timeline.json."""
        if "metrics" not in self._cache:
            from ppsvd.analysis.metrics import summarize
            from ppsvd.analysis.timeline import RunTimeline

            self._cache["metrics"] = summarize(RunTimeline.load(self.run_dir / "timeline.json"))
        return self._cache["metrics"]

    @property
    def videos(self) -> list[Path]:
        return [v for s in self.samples for v in s.videos]

    @property
    def latent_paths(self) -> list[Path]:
        return [s.latents_path for s in self.samples if s.latents_path is not None]


def _sample_output(run_dir: Path, entry: dict[str, Any]) -> SampleOutput:
    def path(rel: str) -> Path:
        return run_dir / rel

    return SampleOutput(
        run_dir=run_dir,
        index=entry["index"],
        name=entry.get("name") or Path(entry.get("latents") or f"sample_{entry['index']:05d}").stem,
        seed=entry.get("seed"),
        image=entry.get("image"),
        conditioning={k: entry[k] for k in ("fps", "motion_bucket_id", "noise_aug_strength") if k in entry},
        videos=tuple(path(v) for v in entry.get("videos", ())),
        latents_path=path(entry["latents"]) if entry.get("latents") else None,
        frame_dirs=tuple(path(f) for f in entry.get("frames", ())),
    )


# -- building configs (shared with the CLI) ----------------------------------------------------------


def resolve_nproc(nproc: int | None, default: int = 1) -> int:
    """nproc, or the torchrun world size; both given must agree."""
    world = env_world()
    if world is None:
        return default if nproc is None else nproc
    if nproc is not None and nproc != world[1]:
        raise ConfigError(f"--nproc {nproc} differs from torchrun's world size {world[1]}; drop --nproc under torchrun")
    return world[1]


def resolve_device(device: str | None) -> str:
    """device, or cuda when torch sees a GPU, else cpu."""
    if device is not None:
        return device
    import torch

    return auto_device(torch.cuda.is_available())


def run_config(
    images: ImageLike | Iterable[ImageLike] | None = None,
    *,
    inputs: str | os.PathLike | Sequence[SampleInput | dict[str, Any]] | None = None,
    model_id: str = DEFAULT_MODEL_ID,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    total_steps: int | None = None,
    latent_shape: Sequence[int] | None = None,
    num_samples: int | None = None,
    nproc: int | None = None,
    device: str | None = None,
    timeout: float = 600.0,
    progress: bool = True,
    **options: Any,
) -> RunConfig:
    """The RunConfig of `ppsvd run` (see run() for the arguments), checked."""
    from ppsvd.io.images import resolve_images
    from ppsvd.io.inputs import read_inputs

    image_list = resolve_images(_as_list(images)) if images is not None else ()
    if inputs is None:
        entries: tuple[SampleInput, ...] = ()
    elif isinstance(inputs, (str, os.PathLike)):
        entries = read_inputs(inputs)
    else:
        entries = tuple(item if isinstance(item, SampleInput) else SampleInput(**item) for item in inputs)
    return RunConfig.from_options(
        model=model_id,
        images=image_list,
        inputs=entries,
        latent_shape=resolve_latent_shape(model_id, latent_shape, num_frames=num_frames, height=height, width=width),
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        num_samples=resolve_num_samples(num_samples, len(entries or image_list)),
        nproc=resolve_nproc(nproc),
        device=resolve_device(device),
        timeout_s=timeout,
        show_progress=progress,
        **options,
    ).validate()


def simulate_config(
    *,
    model_id: str = SYNTHETIC_MODEL,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    total_steps: int | None = None,
    latent_shape: Sequence[int] | None = DEFAULT_LATENT_SHAPE,
    num_samples: int = 8,
    nproc: int | None = None,
    device: str | None = "cpu",
    dtype: str | None = "fp32",
    step_ms: float = 20.0,
    timeout: float = 600.0,
    progress: bool = True,
    **options: Any,
) -> RunConfig:
    """The RunConfig of `ppsvd simulate` (see simulate() for the arguments), checked."""
    if any(v is not None for v in (num_frames, height, width)) and tuple(latent_shape or ()) == DEFAULT_LATENT_SHAPE:
        latent_shape = None  # diffusers' names given: they replace parts of the default shape
    return RunConfig.from_options(
        model=model_id,
        latent_shape=resolve_latent_shape(model_id, latent_shape, num_frames=num_frames, height=height, width=width),
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        num_samples=num_samples,
        nproc=resolve_nproc(nproc, default=4),
        device=device or "cpu",
        dtype=dtype,
        step_ms=step_ms if model_id == SYNTHETIC_MODEL else 0.0,
        timeout_s=timeout,
        show_progress=progress,
        save_video=False,
        **options,
    ).validate()


def _as_list(value: ImageLike | Iterable[ImageLike]) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


# -- running ---------------------------------------------------------------------------------------


def resolve_strategy(config: RunConfig, world=None, *, announce: bool = True) -> RunConfig:
    """--strategy auto -> the layout the cost model predicts best for --goal (the same answer on
    every rank: it depends only on the config), with one line saying why."""
    if config.layout.strategy != "auto":
        return config
    from ppsvd.layouts import apply, choose
    from ppsvd.runtime.planning import known_costs

    n = config.layout.nproc if world is None else world[1]
    config = config.replace(nproc=n)
    config.validate()
    layout, reason, _ = choose(config, known_costs(config))
    if announce:
        from ppsvd.console import out

        out.print(reason, style="dim", soft_wrap=True)
    return apply(config, layout)


def check(config: RunConfig) -> RunConfig:
    """Everything that can fail before a worker starts: the options, the devices, the model's files
    and shapes, the images. Raises ConfigError (one line). Returns the config to run: its images
    named by absolute paths, with the digest of each recorded (ppsvd.io.sources)."""
    from ppsvd.io.sources import record_sources
    from ppsvd.models.base import preflight

    config = record_sources(config.validate())
    if env_world() is None:
        import torch

        config.check_devices(torch.cuda.device_count() if config.model.device == "cuda" else 0, config.layout.nproc)
    preflight(config)
    if config.layout.costs_from:
        from ppsvd.analysis.costs import costs_from_run

        costs_from_run(config.layout.costs_from)  # a run directory without usable costs: one line, now
    return config


def execute(
    config: RunConfig, *, checked: bool = False, run_dir: Path | None = None, indices: Sequence[int] | None = None
) -> RunResult:
    """Run a config: config.nproc local workers, or, under torchrun, this process's stage.

    run_dir and indices: continue a stopped run in its directory with the samples it lacks
    (`--resume`; see ppsvd.io.resume). Raises StageFailedError naming the stage when a stage
    fails, Interrupted (exit code 128 + signal) when a signal stopped the run."""
    config = resolve_strategy(config, env_world())
    if not checked:
        config = check(config)
        if run_dir is None:
            from ppsvd.io.atomic import check_output_dir

            check_output_dir(config.output.output_dir)  # a file or an unwritable place: ConfigError, one line
    indices = None if indices is None else tuple(indices)
    if env_world() is not None:
        from ppsvd.runtime.worker import torchrun_main

        code, run_dir = torchrun_main(config, run_dir=run_dir, indices=indices)
        if code != 0:
            raise StageFailedError(
                f"stage {env_world()[0]} ended with exit code {code}; the failing stage's reason is printed above"
            )
        return RunResult.load(run_dir)
    from ppsvd.runtime.launch import launch

    result = launch(config, run_dir=run_dir, indices=indices)
    return RunResult.load(result.run_dir, wall_s=result.wall_s)


def run(images: ImageLike | Iterable[ImageLike] | None = None, **options: Any) -> RunResult:
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
    """
    return execute(run_config(images, **options))


def simulate(**options: Any) -> RunResult:
    """The pipeline on CPU with the synthetic stand-in model (`ppsvd simulate`): default 4 stages,
    8 samples, 20 ms per step. Keywords are the command's options (nproc, num_samples, step_ms, ...)."""
    return execute(simulate_config(**options))


def bench_plan(
    *,
    gpus: str | Sequence[int] | None = None,
    strategy: str | Sequence[str] = "pipeline",
    partition: str | Sequence[str] = "auto",
    model_id: str | None = None,
    weights: str = "pretrained",
    total_steps: int | None = None,
    num_inference_steps: int | None = None,
    latent_shape: Sequence[int] | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_samples: int = GUIDE_NUM_SAMPLES,
    seed: int = GUIDE_SEED,
    device: str | None = None,
    timeout: float = 600.0,
    cooldown: float = GUIDE_COOLDOWN_S,
    fail_fast: bool = False,
    output_dir: str | os.PathLike = "ppsvd-bench",
    **options: Any,
):
    """The sweep of `ppsvd bench` (a BenchPlan), checked: GPU counts that fit, strategies, base config."""
    from ppsvd.bench import sweep
    from ppsvd.config import STRATEGIES, parse_int_list

    available = sweep.visible_gpus() if device != "cpu" else 0
    if device is None:
        if available == 0:
            raise ConfigError(
                "no CUDA GPU is visible on this machine; run the experiment on CPU with "
                "`ppsvd bench --device cpu --step-ms 20` (synthetic model, 20 ms per step like a GPU)"
            )
        device = "cuda"
    if device == "cuda" and available == 0:
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if model_id is None:
        model_id = SYNTHETIC_MODEL if device == "cpu" else DEFAULT_MODEL_ID
    if gpus is None:
        counts = list(sweep.default_gpu_counts(device, available))
    elif isinstance(gpus, str):
        counts = parse_int_list("--gpus", gpus)
    else:
        counts = parse_int_list("--gpus", ",".join(map(str, gpus)))
    names = [s.strip() for s in (strategy.split(",") if isinstance(strategy, str) else strategy) if s.strip()]
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategy {','.join(names)!r}: {name!r} is not one of {', '.join(STRATEGIES)}")
    base = RunConfig.from_options(
        model=model_id,
        weights=weights,
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        latent_shape=resolve_latent_shape(model_id, latent_shape, num_frames=num_frames, height=height, width=width),
        num_samples=num_samples,
        seed=seed,
        device=device,
        timeout_s=timeout,
        output_dir=Path(output_dir),
        show_progress=False,
        **options,
    )
    return sweep.BenchPlan(
        base=base,
        gpu_counts=tuple(counts),
        strategies=tuple(names),
        partitions=tuple(
            p.strip() for p in (partition.split(",") if isinstance(partition, str) else partition) if p.strip()
        ),
        cooldown_s=cooldown,
        fail_fast=fail_fast,
    ).validate(available if device == "cuda" else None)


def benchmark(*, observer=None, **options: Any):
    """The scaling experiment (`ppsvd bench`): a fresh launch per GPU count (and strategy), then
    benchmark_results.csv/.json and plots in a new folder under output_dir. Returns the sweep's
    BenchResult (runs with their metrics, failed runs, the files written). Keywords are the
    command's options (gpus, strategy, model_id, num_samples, step_ms, device, ...)."""
    from ppsvd.bench import sweep
    from ppsvd.models.base import preflight

    plan = bench_plan(**options)
    preflight(plan.base)  # model files, shapes: a bad input costs one line, not a sweep of failures
    results_dir = sweep.new_results_dir(plan.base.output.output_dir)
    return sweep.run_bench(plan, results_dir, observer=observer)
