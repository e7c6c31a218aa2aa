"""Run configuration: one frozen dataclass, and every check of user input.

Each check raises ConfigError with the bad value and the fix, so the CLI can print one line
and exit 2 before any worker starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppsvd.errors import ConfigError

TRANSPORTS = ("nccl", "gloo", "zmq")
DTYPES = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
STRATEGIES = ("pipeline", "data")
ZMQ_ENDPOINTS = ("auto", "ipc", "tcp")
WEIGHTS = ("pretrained", "random")
LOG_FORMATS = ("auto", "rich", "plain", "json")
"""Progress output: 'rich' bars, 'plain' lines at a steady interval, 'json' lines; 'auto' picks
rich on a terminal and plain otherwise (a cluster job's log file)."""

SYNTHETIC_MODEL = "synthetic"
TINY_MODEL = "tiny"
DEFAULT_MODEL_ID = "stabilityai/stable-video-diffusion-img2vid-xt"

# The guide's defaults (../shared/seed-benchmark-guide.ja.md).
DEFAULT_TOTAL_STEPS = 28
DEFAULT_LATENT_SHAPE = (1, 4, 14, 64, 64)
TINY_LATENT_SHAPE = (1, 4, 4, 8, 8)
"""The embedded tiny SVD's default: 4 frames of 64x64 pixels, so CPU runs take seconds."""
VAE_SCALE_FACTOR = 8
"""Pixels per latent cell in SVD (diffusers' pipe.vae_scale_factor: 2 ** (VAE levels - 1))."""
BUILTIN_IMAGE = "builtin"
"""The image name of a sample that uses the built-in test image (no --image given)."""


def default_latent_shape(model: str) -> tuple[int, int, int, int, int]:
    """The guide's 1 4 14 64 64, except for the tiny model, which has its own small shape."""
    return TINY_LATENT_SHAPE if model == TINY_MODEL else DEFAULT_LATENT_SHAPE


@dataclass(frozen=True, kw_only=True)
class SampleInput:
    """One line of an --inputs job file: an image and, optionally, its own seed and conditioning.

    A value left None takes the run's (--seed + index, --fps, --motion-bucket-id, --noise-aug-strength).
    """

    image: str
    seed: int | None = None
    motion_bucket_id: int | None = None
    fps: int | None = None
    noise_aug_strength: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


SAMPLE_INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(SampleInput))


@dataclass(frozen=True)
class SampleSpec:
    """Everything that differs between samples of one run, fixed before any worker starts."""

    index: int
    image: str
    """An image file, an http(s) URL, or BUILTIN_IMAGE."""
    seed: int
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    name: str
    """Output file stem, unique in the run: '<image stem>-s<seed>' (then '-2', '-3' on repeats)."""

    def conditioning(self) -> dict[str, Any]:
        """The per-sample facts that travel with the sample and land in the manifest."""
        return {
            "seed": self.seed,
            "image": self.image,
            "fps": self.fps,
            "motion_bucket_id": self.motion_bucket_id,
            "noise_aug_strength": self.noise_aug_strength,
            "name": self.name,
        }


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one pipeline run needs. Built by the CLI, checked by validate(), sent to every worker."""

    model: str = SYNTHETIC_MODEL
    """'synthetic' (CPU stand-in), 'tiny' (embedded small SVD), a hub id or a local directory."""
    weights: str = "pretrained"
    """'pretrained' loads weights; 'random' builds the architecture from configs with random weights."""
    total_steps: int = DEFAULT_TOTAL_STEPS
    """Denoising steps T, split over the stages."""
    latent_shape: tuple[int, int, int, int, int] = DEFAULT_LATENT_SHAPE
    """B C F H W: videos per sample, latent channels, frames, latent height and width (pixels = 8x)."""
    num_samples: int = 1
    """Samples to generate; sample i uses seed + i."""
    seed: int = 0
    nproc: int = 1
    """Stages (processes). Under torchrun this is the world size."""
    transport: str | None = None
    """nccl, gloo or zmq; None picks nccl when every stage has its own CUDA device, else gloo."""
    device: str = "cpu"
    dtype: str | None = None
    """fp32, fp16 or bf16; None picks fp16 on CUDA and fp32 on CPU."""
    strategy: str = "pipeline"
    """'pipeline' splits steps over stages; 'data' gives each process whole samples (the baseline)."""
    step_ms: float = 0.0
    """Synthetic model only: time spent per step without using the CPU, to emulate a GPU step."""
    output_dir: Path = Path("ppsvd-runs")
    timeout_s: float = 600.0
    """Longest any single wait may last (a receive, a send, the rendezvous). Failures are usually seen sooner."""
    max_in_flight: int = 2
    """Messages a stage may have queued for sending before it stops computing (back-pressure)."""
    bind_host: str = "127.0.0.1"
    """zmq: interface to bind. Loopback unless asked; multi-node runs need a routable address."""
    zmq_endpoint: str = "auto"
    """zmq: 'ipc' on one host, 'tcp' across hosts; 'auto' picks."""
    # SVD conditioning (diffusers' StableVideoDiffusionPipeline arguments).
    images: tuple[str, ...] = ()
    """Input image files or http(s) URLs; sample i uses images[i % len]. Empty: the built-in test image."""
    inputs: tuple[SampleInput, ...] = ()
    """--inputs job file, one SampleInput per line; sample i uses inputs[i % len]. Excludes images."""
    fps: int = 6
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int | None = None
    video_fps: int | None = None
    """Playback frame rate of the MP4s; None: the sample's fps conditioning (diffusers keeps the two
    apart: export_to_video(frames, fps=...) is separate from the pipeline's fps argument)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of --model, as from_pretrained(revision=...)."""
    variant: str | None = None
    """Weights variant, as from_pretrained(variant=...): None picks fp16 files for an fp16 run when
    the model has them, else the full-precision ones."""
    save_video: bool = True
    save_frames: bool = False
    save_latents: bool = True
    debug: bool = False
    show_progress: bool = True
    log_format: str = "auto"
    """How progress is shown: see LOG_FORMATS."""
    progress_interval_s: float = 10.0
    """Seconds between progress lines in the plain and json formats."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form values recorded in the run's config.json (e.g. the bench sweep it belongs to)."""

    # -- derived ---------------------------------------------------------------------------
    @property
    def is_synthetic(self) -> bool:
        return self.model == SYNTHETIC_MODEL

    @property
    def resolved_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "fp16" if self.device == "cuda" else "fp32"

    @property
    def resolved_transport(self) -> str:
        if self.transport is not None:
            return self.transport
        return "nccl" if self.device == "cuda" else "gloo"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output_dir"] = str(self.output_dir)
        data["latent_shape"] = list(self.latent_shape)
        data["images"] = list(self.images)
        data["inputs"] = [item.to_json() for item in self.inputs]
        data["resolved_dtype"] = self.resolved_dtype
        data["resolved_transport"] = self.resolved_transport
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["output_dir"] = Path(kwargs.get("output_dir", "ppsvd-runs"))
        kwargs["latent_shape"] = tuple(kwargs.get("latent_shape", DEFAULT_LATENT_SHAPE))
        kwargs["images"] = tuple(kwargs.get("images", ()))
        kwargs["inputs"] = tuple(SampleInput(**item) for item in kwargs.get("inputs", ()))
        return cls(**kwargs)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check everything that can be checked without torch. Returns self for chaining."""
        _positive("--total-steps", self.total_steps)
        _positive("--num-samples", self.num_samples)
        _positive("--nproc", self.nproc)
        check_latent_shape(self.latent_shape)
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed} is negative; use a seed >= 0")
        if self.strategy == "pipeline" and self.total_steps < self.nproc:
            raise ConfigError(
                f"--total-steps {self.total_steps} is smaller than the number of stages ({self.nproc}); "
                f"every stage needs at least one step: use --total-steps >= {self.nproc} or --nproc <= {self.total_steps}"
            )
        _choice("--transport", self.transport, TRANSPORTS, allow_none=True)
        _choice("--dtype", self.dtype, DTYPES, allow_none=True)
        _choice("--device", self.device, DEVICES)
        _choice("--strategy", self.strategy, STRATEGIES)
        _choice("--zmq-endpoint", self.zmq_endpoint, ZMQ_ENDPOINTS)
        _choice("--weights", self.weights, WEIGHTS)
        if self.transport == "nccl" and self.device != "cuda":
            raise ConfigError(
                f"--transport nccl needs --device cuda (got --device {self.device}); use --transport gloo or zmq on CPU"
            )
        if self.device == "cpu" and self.resolved_dtype == "fp16" and not self.is_synthetic:
            raise ConfigError("--dtype fp16 is not supported on --device cpu for SVD; use --dtype fp32 or bf16")
        if self.step_ms < 0:
            raise ConfigError(f"--step-ms {self.step_ms} is negative; use 0 or more milliseconds")
        if self.step_ms and not self.is_synthetic:
            raise ConfigError(f"--step-ms only applies to --model synthetic (got --model {self.model}); drop it")
        if self.timeout_s <= 0:
            raise ConfigError(f"--timeout {self.timeout_s} must be positive seconds")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight {self.max_in_flight} must be at least 1")
        if not 0 <= self.motion_bucket_id <= 255:
            raise ConfigError(f"--motion-bucket-id {self.motion_bucket_id} is outside 0..255; pick a value in that range")
        _positive("--fps", self.fps)
        if self.noise_aug_strength < 0:
            raise ConfigError(f"--noise-aug-strength {self.noise_aug_strength} is negative; use a value >= 0 (default 0.02)")
        if self.min_guidance_scale > self.max_guidance_scale:
            raise ConfigError(
                f"--min-guidance-scale {self.min_guidance_scale} is above --max-guidance-scale {self.max_guidance_scale}; "
                "swap them"
            )
        if self.decode_chunk_size is not None:
            _positive("--decode-chunk-size", self.decode_chunk_size)
        return self

    def check_devices(self, cuda_device_count: int, local_world_size: int) -> None:
        """Checks that need to know the machine; called before launching and again in each worker."""
        if self.device == "cuda":
            if cuda_device_count == 0:
                raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu (or ppsvd simulate)")
            if local_world_size > cuda_device_count:
                raise ConfigError(
                    f"{local_world_size} stages on this host but only {cuda_device_count} CUDA device(s) visible; "
                    f"use --nproc {cuda_device_count} or fewer (never two stages on one GPU)"
                )
        if self.resolved_transport == "nccl" and self.device != "cuda":
            raise ConfigError("--transport nccl needs one CUDA device per stage; use --transport gloo or zmq")


def _positive(flag: str, value: int | float) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{flag} {value} must be a positive number")


def _choice(flag: str, value: str | None, choices: tuple[str, ...], *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of {', '.join(choices)}")


def check_latent_shape(shape: Any) -> tuple[int, int, int, int, int]:
    """The guide's --latent-shape: exactly five positive integers, B C F H W."""
    values = tuple(shape)
    if len(values) != 5 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"--latent-shape {' '.join(map(str, values))} must be five integers B C F H W, e.g. --latent-shape 1 4 14 64 64"
        )
    if any(v <= 0 for v in values):
        raise ConfigError(
            f"--latent-shape {' '.join(map(str, values))} has a non-positive size; every one of B C F H W must be >= 1"
        )
    return values  # type: ignore[return-value]


def parse_int_list(flag: str, text: str) -> list[int]:
    """'1,2,4,7' -> [1, 2, 4, 7] with a one-line error for anything else."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. {flag} 1,2,4,7") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text!r} must list positive integers, e.g. {flag} 1,2,4,7")
    return values


def env_world() -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) when running under torchrun, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "RANK" not in os.environ:
        return None
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world
