"""`ppsvd verify`: diffusers' pipeline and ppsvd's layouts on the same inputs, compared, on this machine.

1. Every layout's config is checked first (one line, exit 2, before anything runs).
2. diffusers' StableVideoDiffusionPipeline makes every sample in this process (ppsvd.verify.reference),
   timed; then its UNet and image encoder are freed (the VAE stays for the frame checks).
3. Each layout runs as `ppsvd run` would (ppsvd.api.execution.execute: fresh worker processes), writing
   latents (safetensors) and PNG frames (lossless) to a scratch directory.
4. Each sample's final latent is compared with diffusers': bitwise where the layout claims it,
   else its max relative difference against the layout's bound (ppsvd.verify.bounds). Frames:
   bitwise equal to diffusers' frames, or, for a layout held to a bound, to diffusers' own decode
   of that layout's latents (the decode is never approximate). Throughput: the layout's steady
   rate (its timeline) over diffusers' in this process.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppsvd.api.execution import check, execute
from ppsvd.config import RunConfig
from ppsvd.environment import software_versions
from ppsvd.errors import Interrupted, PpsvdError
from ppsvd.runtime.worker import cpu_threads
from ppsvd.verify.bounds import describe_bound
from ppsvd.verify.layouts import VerifyLayout

Say = Callable[[str], None]
"""Where progress lines go (stderr in the command; nothing in tests)."""


@dataclass
class LayoutResult:
    """One layout's run against the reference."""

    layout: str
    """Its spec with the transport it ran over: pipeline:3:zmq (what --layouts takes back)."""
    strategy: str
    nproc: int
    transport: str | None
    compiled: bool
    stages_per_gpu: int
    bound: float | None
    """None: must be bitwise equal; else the max relative difference allowed (ppsvd.verify.bounds)."""
    ok: bool = False
    problem: str | None = None
    """Why it failed, in words (None when it kept its promise)."""
    latents_bitwise: bool | None = None
    """Every sample's final latent bitwise equal to diffusers'."""
    max_relative_difference: float | None = None
    """Largest over samples of max |ppsvd - diffusers| / max |diffusers|."""
    frames_equal: bool | None = None
    """Every frame equal to diffusers' (bitwise layouts) or to diffusers' decode of this layout's
    latents (layouts held to a bound)."""
    max_frame_difference: int | None = None
    """Largest |difference| of a uint8 pixel against diffusers' own frames (0 when bitwise)."""
    samples_per_sec: float | None = None
    """The layout's headline rate (steady state for a pipeline, whole run for data) from its timeline."""
    vs_diffusers: float | None = None
    """samples_per_sec / diffusers' samples/s in this process."""
    median_step_s: float | None = None
    """The layout's median time of one denoising step (its timeline): what --compile speeds up,
    without the encode and decode around the steps."""
    compile_s: float | None = None
    model_load_s: float | None = None
    wall_s: float | None = None
    run_dir: str | None = None

    @property
    def claim(self) -> str:
        return describe_bound(self.bound)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["claim"] = self.claim
        return data


@dataclass
class VerifyReport:
    """Everything `ppsvd verify` found."""

    settings: dict[str, Any]
    reference: dict[str, Any]
    layouts: list[LayoutResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.layouts) and all(r.ok for r in self.layouts)

    @property
    def failed(self) -> list[LayoutResult]:
        return [r for r in self.layouts if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": [r.layout for r in self.failed],
            "settings": self.settings,
            "reference": self.reference,
            "layouts": [r.to_json() for r in self.layouts],
            "environment": self.environment,
        }


def relative_difference(a, b) -> float:
    """max |a - b| / max |b| over every element (float64), the measure of ppsvd.verify.bounds."""
    a, b = a.double(), b.double()
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def verify(
    base: RunConfig,
    layouts: Sequence[VerifyLayout],
    *,
    output_dir: Path | None = None,
    say: Say = lambda line: None,
) -> VerifyReport:
    """Run the reference and every layout; compare. Raises ConfigError (before running anything)
    for a layout that cannot run here; a layout that fails while running is recorded, not raised."""
    import torch  # heavy: torch

    from ppsvd.verify import reference  # heavy: imports torch

    gpus = torch.cuda.device_count() if base.model.device == "cuda" else 0
    with tempfile.TemporaryDirectory(prefix="ppsvd-verify-") as scratch:
        root = Path(output_dir) if output_dir is not None else Path(scratch)
        planned = [(layout, layout.config(base, gpus, root)) for layout in layouts]
        for _, config in planned:
            check(config)  # every layout's one-line refusal comes before any work
        threads = None
        if base.model.device == "cpu":
            threads = cpu_threads()
            torch.set_num_threads(threads)  # the stages' count: on CPU float results depend on it
        say(f"diffusers' StableVideoDiffusionPipeline ({base.model.model}) in this process ...")
        pipe = reference.build_pipeline(base)
        ref = reference.Reference(threads=threads)
        for index in range(base.job.num_samples):
            ref.samples[index] = reference.run_sample(pipe, base, index)
            say(f"  sample {index}: {ref.samples[index].seconds:.2f} s")
        reference.keep_only_the_decoder(pipe)
        report = VerifyReport(
            settings=settings_of(base),
            reference=ref.to_json(),
            environment={
                **software_versions(),
                "gpus_visible": gpus,
                "gpu": torch.cuda.get_device_name(0) if gpus else None,
            },
        )
        for layout, config in planned:
            label = layout.label(config)
            say(f"{label} ...")
            result = run_layout(layout, config, label, ref, pipe)
            say(f"{label}: {'ok' if result.ok else 'FAILED: ' + (result.problem or '')}")
            report.layouts.append(result)
    return report


def run_layout(layout: VerifyLayout, config: RunConfig, label: str, ref, pipe) -> LayoutResult:
    """Run one layout and compare what it wrote with the reference."""
    from ppsvd.verify import reference  # heavy: imports torch

    dtype = config.model.resolved_dtype
    result = LayoutResult(
        layout=label,
        strategy=layout.strategy,
        nproc=layout.nproc,
        transport=config.resolved_transport if layout.nproc > 1 else None,
        compiled=layout.compile,
        stages_per_gpu=config.layout.stages_per_gpu,
        bound=layout.bound(dtype),
    )
    try:
        run = execute(config, announce=False)  # its notices would interleave with verify's own lines
    except Interrupted:
        raise  # Ctrl-C or a signal stops verify itself, not just this layout
    except PpsvdError as exc:
        result.problem = f"did not run: {one_line(str(exc))}"
        return result
    result.run_dir = str(run.run_dir)
    result.wall_s = run.wall_s
    metrics = run.metrics
    result.samples_per_sec = metrics.throughput
    if metrics.throughput is not None and ref.throughput:
        result.vs_diffusers = metrics.throughput / ref.throughput
    result.compile_s, result.model_load_s = metrics.compile_s, metrics.model_load_s
    result.median_step_s = metrics.median_step_s

    outputs = {sample.index: sample for sample in run.samples}
    missing = sorted(set(ref.samples) - set(outputs))
    if missing:
        result.problem = f"samples {missing} are missing from its outputs"
        return result
    bitwise, worst, frames_equal, worst_pixel = True, 0.0, True, 0
    for index, expected in ref.samples.items():
        latents = outputs[index].latents()
        bitwise &= latents.dtype == expected.latents.dtype and torch_equal(latents, expected.latents)
        worst = max(worst, relative_difference(latents, expected.latents))
        frames = np.stack([outputs[index].frames(video) for video in range(expected.frames.shape[0])])
        worst_pixel = max(worst_pixel, _max_pixel_difference(frames, expected.frames))
        # Frames are diffusers' decode of the layout's own latents: the reference's when bitwise.
        wanted = expected.frames if result.bound is None else reference.decode(pipe, latents, config)
        frames_equal &= frames.shape == wanted.shape and np.array_equal(frames, wanted)
    result.latents_bitwise, result.max_relative_difference = bitwise, worst
    result.frames_equal, result.max_frame_difference = frames_equal, worst_pixel
    if result.bound is None and not bitwise:
        result.problem = (
            f"latents differ from diffusers' (max relative difference {worst:.2e}); bitwise equality claimed"
        )
    elif result.bound is not None and not worst <= result.bound:
        result.problem = (
            f"latents differ from diffusers' by {worst:.2e} relative, above the bound {result.bound:.0e} ({dtype})"
        )
    elif not frames_equal:
        against = "diffusers' frames" if result.bound is None else "diffusers' decode of its latents"
        result.problem = f"frames differ from {against} (up to {worst_pixel} levels of 255)"
    result.ok = result.problem is None
    return result


def one_line(text: str, limit: int = 400) -> str:
    """A stage's reason as one line (a compiler's error can span many), cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def torch_equal(a, b) -> bool:
    import torch  # heavy: torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def _max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        return 255
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def settings_of(config: RunConfig) -> dict[str, Any]:
    """What both sides ran: model, device, dtype, shape, steps, samples, seed, guidance."""
    return {
        "model": config.model.model,
        "weights": config.model.weights,
        "device": config.model.device,
        "dtype": config.model.resolved_dtype,
        "latent_shape": list(config.job.latent_shape),
        "total_steps": config.job.total_steps,
        "num_samples": config.job.num_samples,
        "seed": config.job.seed,
        "min_guidance_scale": config.svd.min_guidance_scale,
        "max_guidance_scale": config.svd.max_guidance_scale,
        "decode_chunk_size": config.svd.decode_chunk_size,
        "images": list(config.job.images),
    }
