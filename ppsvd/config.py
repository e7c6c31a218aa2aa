"""Run configuration: a frozen RunConfig of frozen sections, and every check of user input.

Each check raises ConfigError with the bad value and the fix, so the CLI can print one line
and exit 2 before any worker starts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ppsvd.errors import ConfigError
from ppsvd.planning.costs import CFG_HALF_RATIO
from ppsvd.planning.layouts import GOALS, Goal, Layout

Transport = Literal["nccl", "gloo", "zmq"]
Dtype = Literal["fp32", "fp16", "bf16"]
Device = Literal["cpu", "cuda"]
Strategy = Literal["pipeline", "data", "cfg", "auto"]
ZmqEndpoint = Literal["auto", "ipc", "tcp"]
Weights = Literal["pretrained", "random"]
LogFormat = Literal["auto", "rich", "plain", "json"]

TRANSPORTS: tuple[str, ...] = get_args(Transport)
DTYPES: tuple[str, ...] = get_args(Dtype)
DEVICES: tuple[str, ...] = get_args(Device)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
"""pipeline: steps split over stages; data: whole samples from a shared work queue; cfg: the two
halves of classifier-free guidance on two processes per stage; auto: the layout the cost model
predicts best for --goal (ppsvd.planner.choose_layout). --pipeline-stages / --replicas make hybrids."""
ZMQ_ENDPOINTS: tuple[str, ...] = get_args(ZmqEndpoint)
WEIGHTS: tuple[str, ...] = get_args(Weights)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
"""Progress output: 'rich' bars, 'plain' lines at a steady interval, 'json' lines; 'auto' picks
rich on a terminal and plain otherwise (a cluster job's log file)."""

SYNTHETIC_MODEL = "synthetic"
TINY_MODEL = "tiny"
DEFAULT_MODEL_ID = "stabilityai/stable-video-diffusion-img2vid-xt"

# Every run's defaults: the benchmark's (see ppsvd/bench/defaults.py for where they come from).
DEFAULT_TOTAL_STEPS = 28
PARTITIONS = ("auto", "even")
DEFAULT_PARTITION = "auto"
"""Split the steps by cost: equal costs give the even split; a costly decode gives the last stage fewer steps."""
DEFAULT_LATENT_SHAPE = (1, 4, 14, 64, 64)
TINY_LATENT_SHAPE = (1, 4, 4, 8, 8)
"""The embedded tiny SVD's default: 4 frames of 64x64 pixels, so CPU runs take seconds."""


def auto_device(cuda_usable: bool) -> str:
    """The device of a run without --device: cuda when torch can use a GPU, else cpu (run and doctor)."""
    return "cuda" if cuda_usable else "cpu"


def default_latent_shape(model: str) -> tuple[int, int, int, int, int]:
    """The benchmark's 1 4 14 64 64, except for the tiny model, which has its own small shape."""
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


# -- the run's configuration, one section per concern -------------------------------------------
# Each field (its default and docstring) lives in exactly one section; RunConfig composes them.
# Flat option names (the CLI's, the Python API's, an old flat config.json) reach their section
# through OPTION_SECTIONS, derived from these dataclasses' fields.


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """Which model runs, and on what device and precision."""

    model: str = SYNTHETIC_MODEL
    """'synthetic' (CPU stand-in), 'tiny' (embedded small SVD), a hub id or a local directory."""
    weights: Weights = "pretrained"
    """'pretrained' loads weights; 'random' builds the architecture from configs with random weights."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of --model, as from_pretrained(revision=...)."""
    variant: str | None = None
    """Weights variant, as from_pretrained(variant=...): None picks fp16 files for an fp16 run when
    the model has them, else the full-precision ones."""
    dtype: Dtype | None = None
    """fp32, fp16 or bf16; None picks fp16 on CUDA and fp32 on CPU."""
    device: Device = "cpu"
    """cpu or cuda. Commands resolve a missing --device with auto_device before a run; only doctor
    plans with None (not given), and resolves it once it has probed the machine."""
    compile: bool = False
    """torch.compile the UNet of every stage (regional compilation of its repeated blocks where
    diffusers offers it for the model, else the whole UNet); off: eager, bitwise equal to diffusers.
    Compiled outputs stay within a documented bound of diffusers' (ppsvd.verify.bounds)."""

    @property
    def is_synthetic(self) -> bool:
        return self.model == SYNTHETIC_MODEL

    @property
    def resolved_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "fp16" if self.device == "cuda" else "fp32"

    def validate(self) -> None:
        _choice("--dtype", self.dtype, DTYPES, allow_none=True)
        _choice("--device", self.device, DEVICES)
        _choice("--weights", self.weights, WEIGHTS)
        if self.device == "cpu" and self.resolved_dtype == "fp16" and not self.is_synthetic:
            raise ConfigError("--dtype fp16 is not supported on --device cpu for SVD; use --dtype fp32 or bf16")
        if self.variant is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.variant):
            raise ConfigError(f"--variant {self.variant!r} is not a weights variant name; use e.g. --variant fp16")


@dataclass(frozen=True, kw_only=True)
class JobSection:
    """What to generate: how many samples, of what size, from which inputs."""

    total_steps: int = DEFAULT_TOTAL_STEPS
    """Denoising steps T, split over the stages."""
    latent_shape: tuple[int, int, int, int, int] = DEFAULT_LATENT_SHAPE
    """B C F H W: videos per sample, latent channels, frames, latent height and width (pixels: times the
    model's VAE scale factor, ppsvd.models.pixels)."""
    num_samples: int = 1
    """Samples to generate; sample i uses seed + i."""
    seed: int = 0
    images: tuple[str, ...] = ()
    """Input image files or http(s) URLs; sample i uses images[i % len]. Empty: the built-in test image."""
    inputs: tuple[SampleInput, ...] = ()
    """--inputs job file, one SampleInput per line; sample i uses inputs[i % len]. Excludes images."""

    @property
    def input_images(self) -> tuple[str, ...]:
        """The image of each input (--image values, or the --inputs lines), in order."""
        return tuple(item.image for item in self.inputs) if self.inputs else self.images

    def validate(self) -> None:
        check_positive("--total-steps", self.total_steps)
        check_positive("--num-samples", self.num_samples)
        check_latent_shape(self.latent_shape)
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed} is negative; use a seed >= 0")
        if self.images and self.inputs:
            raise ConfigError("--image and --inputs both given; list the images in the --inputs file, or drop --inputs")
        for k, item in enumerate(self.inputs):
            where = f"--inputs entry {k + 1} ({item.image}): "
            if item.seed is not None and item.seed < 0:
                raise ConfigError(f"{where}seed {item.seed} is negative; use a seed >= 0")
            _check_conditioning(
                where, fps=item.fps, motion_bucket_id=item.motion_bucket_id, noise_aug_strength=item.noise_aug_strength
            )


@dataclass(frozen=True, kw_only=True)
class LayoutSection:
    """How the processes are arranged and the steps split over them."""

    nproc: int = 1
    """Stages (processes). Under torchrun this is the world size."""
    strategy: Strategy = "pipeline"
    """'pipeline' splits steps over stages; 'data' gives each process whole samples (the baseline);
    'cfg' splits each step's guidance batch over two processes; 'auto' is resolved before a run."""
    pipeline_stages: int | None = None
    """Stages per pipeline (each a process, or a guidance pair with --strategy cfg); None: what the strategy implies."""
    replicas: int | None = None
    """Independent copies of the layout taking samples from one work queue; None: what the strategy implies."""
    goal: Goal = "throughput"
    """--strategy auto: pick the layout with the shortest makespan ('throughput') or per-video latency ('latency')."""
    partition: str = DEFAULT_PARTITION
    """How the steps are split over stages: 'auto' (by measured or known costs, ppsvd.planning.costs.auto_split),
    'even' (sizes differ by at most one), or explicit sizes 'a,b,c' (one per stage, summing to T)."""
    costs_from: str | None = None
    """A previous run's directory: plan (and predict) with the costs its timeline.json recorded."""
    max_in_flight: int = 2
    """Messages a stage may have queued for sending before it stops computing (back-pressure)."""
    stages_per_gpu: int = 1
    """CUDA only: consecutive stages that share one GPU (local rank r runs on GPU r // stages_per_gpu).
    1 (the default): one stage per GPU. More needs gloo or zmq: NCCL refuses two ranks on one device."""

    def validate(self) -> None:
        check_positive("--nproc", self.nproc)
        _choice("--strategy", self.strategy, STRATEGIES)
        _choice("--goal", self.goal, GOALS)
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight {self.max_in_flight} must be at least 1")
        if not isinstance(self.stages_per_gpu, int) or self.stages_per_gpu < 1:
            raise ConfigError(f"--stages-per-gpu {self.stages_per_gpu} must be a whole number >= 1")

    def gpu_index(self, local_rank: int) -> int:
        """The CUDA device (of the visible ones) that local rank `local_rank` runs on."""
        return local_rank // self.stages_per_gpu

    def gpus_needed(self, local_world_size: int) -> int:
        """CUDA devices `local_world_size` stages on one host occupy."""
        return -(-local_world_size // self.stages_per_gpu)


@dataclass(frozen=True, kw_only=True)
class SyntheticSection:
    """Synthetic model only: the costs it emulates (time spent without using the CPU)."""

    step_ms: float = 0.0
    """Synthetic model only: time spent per step without using the CPU, to emulate a GPU step."""
    encode_ms: float = 0.0
    """Synthetic model only: stage 0's time per sample to prepare it (SVD's image encode), spent like step_ms."""
    decode_ms: float = 0.0
    """Synthetic model only: the last stage's time per sample to finish it (SVD's VAE decode), spent like step_ms."""
    stage_speed: tuple[float, ...] = ()
    """Synthetic model only: relative speed of each stage's device (0.5 = half as fast); empty: all 1."""
    cfg_half_ms: float | None = None
    """Synthetic model only: one guidance half's step (batch 1) in ms; None: step_ms x CFG_HALF_RATIO."""

    @property
    def resolved_cfg_half_ms(self) -> float:
        """One guidance half's step (--cfg-half-ms, or --step-ms x CFG_HALF_RATIO)."""
        return self.cfg_half_ms if self.cfg_half_ms is not None else self.step_ms * CFG_HALF_RATIO

    @property
    def given(self) -> tuple[str, ...]:
        """The flags of this section that were set (each only applies to the synthetic model)."""
        return tuple(
            flag
            for flag, set_ in (
                ("--step-ms", bool(self.step_ms)),
                ("--encode-ms", bool(self.encode_ms)),
                ("--decode-ms", bool(self.decode_ms)),
                ("--cfg-half-ms", self.cfg_half_ms is not None),
                ("--stage-speed", bool(self.stage_speed)),
            )
            if set_
        )

    def validate(self) -> None:
        for flag, value in (
            ("--step-ms", self.step_ms),
            ("--encode-ms", self.encode_ms),
            ("--decode-ms", self.decode_ms),
        ):
            if value < 0:
                raise ConfigError(f"{flag} {value} is negative; use 0 or more milliseconds")
        if self.cfg_half_ms is not None and self.cfg_half_ms < 0:
            raise ConfigError(f"--cfg-half-ms {self.cfg_half_ms} is negative; use 0 or more milliseconds")
        if any(v <= 0 for v in self.stage_speed):
            text = ",".join(f"{v:g}" for v in self.stage_speed)
            raise ConfigError(f"--stage-speed {text} must list positive speeds, e.g. --stage-speed 1,1,1,0.5")


@dataclass(frozen=True, kw_only=True)
class TransportSection:
    """How stages talk: the transport, where it binds, and how long any wait may last."""

    transport: Transport | None = None
    """nccl, gloo or zmq; None picks nccl when every stage has its own CUDA device, else gloo."""
    bind_host: str | None = None
    """zmq tcp: the address to bind. None: loopback when the sending stage runs on this host, else this
    host's address on the route to the store (backends/zmq.py decides from where each peer runs)."""
    zmq_endpoint: ZmqEndpoint = "auto"
    """zmq: 'ipc' on one host, 'tcp' across hosts; 'auto' picks."""
    timeout_s: float = 600.0
    """Longest any single wait may last (a receive, a send, the rendezvous). Failures are usually seen sooner."""
    stall_timeout_s: float = 60.0
    """A stage in the middle of its steps that makes no step for max(this, 20 x its median step) is hung."""

    def validate(self) -> None:
        _choice("--transport", self.transport, TRANSPORTS, allow_none=True)
        _choice("--zmq-endpoint", self.zmq_endpoint, ZMQ_ENDPOINTS)
        if self.timeout_s <= 0:
            raise ConfigError(f"--timeout {self.timeout_s} must be positive seconds")
        if self.stall_timeout_s <= 0:
            raise ConfigError(f"--stall-timeout {self.stall_timeout_s} must be positive seconds")


@dataclass(frozen=True, kw_only=True)
class SvdSection:
    """SVD conditioning: diffusers' StableVideoDiffusionPipeline arguments (the run's defaults)."""

    fps: int = 6
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int | None = None

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance is on (diffusers: max_guidance_scale > 1): there are two halves to split."""
        return self.max_guidance_scale > 1

    def validate(self) -> None:
        _check_conditioning(
            "", fps=self.fps, motion_bucket_id=self.motion_bucket_id, noise_aug_strength=self.noise_aug_strength
        )
        if self.min_guidance_scale > self.max_guidance_scale:
            raise ConfigError(
                f"--min-guidance-scale {self.min_guidance_scale} is above --max-guidance-scale "
                f"{self.max_guidance_scale}; "
                "swap them"
            )
        if self.decode_chunk_size is not None:
            check_positive("--decode-chunk-size", self.decode_chunk_size)


@dataclass(frozen=True, kw_only=True)
class OutputSection:
    """What a run writes, and where."""

    output_dir: Path = Path("ppsvd-runs")
    save_video: bool = True
    save_frames: bool = False
    save_latents: bool = True
    video_fps: int | None = None
    """Playback frame rate of the MP4s; None: the sample's fps conditioning (diffusers keeps the two
    apart: export_to_video(frames, fps=...) is separate from the pipeline's fps argument)."""

    def validate(self) -> None:
        if self.video_fps is not None:
            check_positive("--video-fps", self.video_fps)


@dataclass(frozen=True, kw_only=True)
class UiSection:
    """What the user sees while a run goes."""

    debug: bool = False
    show_progress: bool = True
    log_format: LogFormat = "auto"
    """How progress is shown: see LOG_FORMATS."""
    progress_interval_s: float = 10.0
    """Seconds between progress lines in the plain and json formats."""

    def validate(self) -> None:
        _choice("--log-format", self.log_format, LOG_FORMATS)
        if self.progress_interval_s <= 0:
            raise ConfigError(f"--progress-interval {self.progress_interval_s} must be positive seconds")


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "job": JobSection,
    "layout": LayoutSection,
    "synthetic": SyntheticSection,
    "transport": TransportSection,
    "svd": SvdSection,
    "output": OutputSection,
    "ui": UiSection,
}
"""RunConfig's sections, by attribute name."""

OPTION_SECTIONS: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
"""Flat option name -> the section that holds it: the one routing table, derived from the sections."""

OPTION_NAMES = (*OPTION_SECTIONS, "extra")
"""Every flat option name RunConfig.from_options and replace accept."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one pipeline run needs. Built by the CLI, checked by validate(), sent to every worker."""

    model: ModelSection = field(default_factory=ModelSection)
    job: JobSection = field(default_factory=JobSection)
    layout: LayoutSection = field(default_factory=LayoutSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    transport: TransportSection = field(default_factory=TransportSection)
    svd: SvdSection = field(default_factory=SvdSection)
    output: OutputSection = field(default_factory=OutputSection)
    ui: UiSection = field(default_factory=UiSection)
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form values recorded in the run's config.json (e.g. the bench sweep it belongs to)."""

    # -- construction from flat option names -----------------------------------------------------
    @classmethod
    def from_options(cls, **options: Any) -> RunConfig:
        """A config from flat option names (nproc=2, fps=7, ...), each routed to its section."""
        return cls().replace(**options)

    def replace(self, **options: Any) -> RunConfig:
        """A copy with flat options changed (nproc=2, fps=7, ...), each routed to its section."""
        grouped: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in options.items():
            if name == "extra":
                top[name] = value
            elif name in OPTION_SECTIONS:
                grouped.setdefault(OPTION_SECTIONS[name], {})[name] = value
            else:
                raise TypeError(f"RunConfig has no option {name!r}")
        for section, changes in grouped.items():
            top[section] = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **top)

    def options(self) -> dict[str, Any]:
        """Every flat option name -> its value (what --resume compares by name)."""
        values = {name: getattr(getattr(self, section), name) for name, section in OPTION_SECTIONS.items()}
        values["extra"] = self.extra
        return values

    # -- derived ---------------------------------------------------------------------------
    @property
    def resolved_transport(self) -> str:
        """--transport, or nccl when the run is on CUDA, else gloo."""
        if self.transport.transport is not None:
            return self.transport.transport
        return "nccl" if self.model.device == "cuda" and self.layout.stages_per_gpu == 1 else "gloo"

    # -- config.json -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Nested by section (plus extra and the resolved dtype and transport)."""
        data: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        data["output"]["output_dir"] = str(self.output.output_dir)
        data["job"]["latent_shape"] = list(self.job.latent_shape)
        data["job"]["images"] = list(self.job.images)
        data["job"]["inputs"] = [item.to_json() for item in self.job.inputs]
        data["synthetic"]["stage_speed"] = list(self.synthetic.stage_speed)
        data["extra"] = dict(self.extra)
        data["resolved_dtype"] = self.model.resolved_dtype
        data["resolved_transport"] = self.resolved_transport
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """From to_json's nested form, or the flat config.json of runs written before the sections
        (so --resume continues those). Keys that are no option (world_size, costs, ...) are ignored."""
        if isinstance(data.get("job"), dict):  # nested by section
            flat = {
                k: v for name in SECTIONS for k, v in (data.get(name) or {}).items() if OPTION_SECTIONS.get(k) == name
            }
            if "extra" in data:
                flat["extra"] = data["extra"]
        else:
            flat = {k: v for k, v in data.items() if k in OPTION_NAMES}
        for name, kind in (("output_dir", Path), ("latent_shape", tuple), ("images", tuple), ("stage_speed", tuple)):
            if name in flat:
                flat[name] = kind(flat[name])
        if "inputs" in flat:
            flat["inputs"] = tuple(SampleInput(**item) for item in flat["inputs"])
        return cls.from_options(**flat)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check everything that can be checked without torch: each section's own checks, then the
        ones across sections. Returns self for chaining."""
        self.job.validate()
        self.layout.validate()
        stages = self.layout_plan().stages if self.layout.strategy != "auto" else 1
        if stages > 1 and self.job.total_steps < stages:
            fewer = f"--nproc <= {self.job.total_steps}" if stages == self.layout.nproc else "fewer --pipeline-stages"
            raise ConfigError(
                f"--total-steps {self.job.total_steps} is smaller than the number of stages ({stages}); "
                f"every stage needs at least one step: use --total-steps >= {stages} or {fewer}"
            )
        self.transport.validate()
        self.model.validate()
        if self.transport.transport == "nccl" and self.model.device != "cuda":
            raise ConfigError(
                f"--transport nccl needs --device cuda (got --device {self.model.device}); use --transport gloo or zmq "
                "on CPU"
            )
        self._check_placement()
        self.synthetic.validate()
        self._check_costs()
        self.svd.validate()
        self.output.validate()
        self.ui.validate()
        return self

    def _check_placement(self) -> None:
        """--stages-per-gpu: CUDA only, and never with NCCL; --compile: only a model with a UNet."""
        k = self.layout.stages_per_gpu
        if k > 1 and self.model.device != "cuda":
            raise ConfigError(
                f"--stages-per-gpu {k} places stages on CUDA devices, but --device is {self.model.device} "
                "(every CPU stage shares the host already); drop --stages-per-gpu or use --device cuda"
            )
        if k > 1 and self.transport.transport == "nccl":
            raise ConfigError(
                f"--stages-per-gpu {k} puts several stages on one GPU, and NCCL refuses two ranks on the same "
                "device; use --transport gloo or zmq (or --stages-per-gpu 1)"
            )
        if self.model.compile and self.model.is_synthetic:
            raise ConfigError(
                "--compile compiles the SVD UNet with torch.compile, and the synthetic model has none; "
                "drop --compile, or use --model-id tiny (or an SVD model)"
            )

    def _check_costs(self) -> None:
        """The synthetic section only with the synthetic model; --stage-speed and --partition against the layout."""
        for flag in self.synthetic.given:
            if not self.model.is_synthetic:
                raise ConfigError(f"{flag} only applies to --model synthetic (got --model {self.model.model}); drop it")
        speeds, nproc = self.synthetic.stage_speed, self.layout.nproc
        if speeds and len(speeds) != nproc:
            text = ",".join(f"{v:g}" for v in speeds)
            raise ConfigError(
                f"--stage-speed {text} gives {len(speeds)} speeds for {nproc} stages; give one per stage (--nproc "
                f"{nproc})"
            )
        partition, strategy = self.layout.partition, self.layout.strategy
        sizes = partition_sizes(partition)
        if sizes is not None:
            if strategy in ("data", "auto"):
                raise ConfigError(
                    f"--partition {partition} splits a pipeline's steps; drop it with --strategy {strategy}"
                )
            stages = self.layout_plan().stages if strategy != "auto" else nproc
            total = self.job.total_steps
            if len(sizes) != stages or sum(sizes) != total:
                raise ConfigError(
                    f"--partition {partition} gives {len(sizes)} stages {sum(sizes)} steps; a run of {stages} stages "
                    f"and --total-steps {total} needs {stages} sizes >= 1 that sum to {total}, or auto/even"
                )

    def layout_plan(self, nproc: int | None = None) -> Layout:
        """How the processes are arranged (--strategy, --pipeline-stages, --replicas) on `nproc`
        (default --nproc); ConfigError in one line when it does not use exactly that many."""
        lay = self.layout
        return resolve_layout(
            lay.strategy,
            lay.nproc if nproc is None else nproc,
            lay.pipeline_stages,
            lay.replicas,
            guidance=self.svd.uses_guidance,
            max_guidance=self.svd.max_guidance_scale,
        )

    def check_devices(self, cuda_device_count: int, local_world_size: int) -> None:
        """Checks that need to know the machine; called before launching and again in each worker."""
        if self.model.device == "cuda":
            if cuda_device_count == 0:
                raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu (or ppsvd simulate)")
            needed, k = self.layout.gpus_needed(local_world_size), self.layout.stages_per_gpu
            if needed > cuda_device_count:
                per = f" at {k} stages per GPU" if k > 1 else ""
                raise ConfigError(
                    f"{local_world_size} stages on this host{per} need {needed} CUDA devices but only "
                    f"{cuda_device_count} are visible; use --nproc {cuda_device_count * k} or fewer "
                    "(never two stages on one GPU unless --stages-per-gpu says so: "
                    f"--stages-per-gpu {-(-local_world_size // cuda_device_count)} --transport gloo or zmq)"
                )
        if self.resolved_transport == "nccl" and self.model.device != "cuda":
            raise ConfigError("--transport nccl needs one CUDA device per stage; use --transport gloo or zmq")


def _check_conditioning(
    where: str, *, fps: int | None, motion_bucket_id: int | None, noise_aug_strength: float | None
) -> None:
    """SVD's micro-conditioning values (the run's, or one --inputs entry's: `where` says which)."""
    flag = (lambda name: f"--{name}") if not where else (lambda name: f"{where}{name.replace('-', '_')}")
    if motion_bucket_id is not None and not 0 <= motion_bucket_id <= 255:
        raise ConfigError(
            f"{flag('motion-bucket-id')} {motion_bucket_id} is outside 0..255; pick a value in that range"
        )
    if fps is not None:
        check_positive(flag("fps"), fps)
    if noise_aug_strength is not None and noise_aug_strength < 0:
        raise ConfigError(
            f"{flag('noise-aug-strength')} {noise_aug_strength} is negative; use a value >= 0 (default 0.02)"
        )


# -- layouts --------------------------------------------------------------------------------------


def resolve_layout(
    strategy: str,
    nproc: int,
    pipeline_stages: int | None = None,
    replicas: int | None = None,
    *,
    guidance: bool = True,
    max_guidance: float = 3.0,
) -> Layout:
    """--strategy pipeline|data|cfg with --pipeline-stages K / --replicas R -> a Layout of exactly
    nproc processes (R x K x 2 for cfg, R x K otherwise); ConfigError naming the mismatch."""
    if strategy == "auto":
        raise ConfigError(
            "--strategy auto is resolved before a run starts (ppsvd.planner.choose_layout); pick a layout first"
        )
    for flag, value in (("--pipeline-stages", pipeline_stages), ("--replicas", replicas)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1")
    cfg = strategy == "cfg"
    if cfg and not guidance:
        raise ConfigError(
            f"--strategy cfg splits classifier-free guidance, but --max-guidance-scale {max_guidance:g} <= 1 turns it "
            "off: "
            "nothing to split; use --strategy pipeline or data, or a guidance scale above 1"
        )
    width = 2 if cfg else 1
    if strategy == "data":
        if pipeline_stages not in (None, 1):
            raise ConfigError(
                f"--strategy data runs whole samples per process, but --pipeline-stages {pipeline_stages} asks for a "
                "pipeline; "
                f"use --strategy pipeline --pipeline-stages {pipeline_stages} --replicas "
                f"{max(1, nproc // pipeline_stages)}"
            )
        stages, reps = 1, replicas if replicas is not None else nproc
    else:
        reps = replicas if replicas is not None else 1
        if pipeline_stages is not None:
            stages = pipeline_stages
        elif nproc % (width * reps) == 0:
            stages = nproc // (width * reps)
        else:
            stages = max(1, nproc // (width * reps))
    layout = Layout(reps, stages, cfg)
    if layout.processes != nproc:
        shape = f"{reps} replica{'s' if reps != 1 else ''} x {stages} stage{'s' if stages != 1 else ''}" + (
            " x 2 (cfg)" if cfg else ""
        )
        options = [
            f"{r} x {k}" + (" x 2" if cfg else "")
            for r in range(1, nproc + 1)
            for k in range(1, nproc + 1)
            if r * k * width == nproc
        ]
        raise ConfigError(
            f"--nproc {nproc} cannot run {shape} = {layout.processes} processes; "
            + (
                f"use a layout of exactly {nproc}: {', '.join(options)} (replicas x stages"
                + (" x pair)" if cfg else ")")
                if options
                else "--strategy cfg needs an even --nproc"
            )
        )
    return layout


def partition_sizes(text: str) -> tuple[int, ...] | None:
    """--partition: None for 'auto' and 'even', the sizes for 'a,b,c'; ConfigError for anything else."""
    if text in PARTITIONS:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes):
        raise ConfigError(f"--partition {text!r} is not auto, even or step counts >= 1 per stage such as 4,5,5,5,5,3,1")
    return sizes


def check_positive(flag: str, value: int | float) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{flag} {value} must be a positive number")


def _choice(flag: str, value: str | None, choices: tuple[str, ...], *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of {', '.join(choices)}")


def check_latent_shape(shape: Any) -> tuple[int, int, int, int, int]:
    """--latent-shape (the benchmark's way to give the size): exactly five positive integers, B C F H W."""
    values = tuple(shape)
    if len(values) != 5 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"--latent-shape {' '.join(map(str, values))} must be five integers B C F H W, e.g. --latent-shape 1 4 14 "
            "64 64"
        )
    if any(v <= 0 for v in values):
        raise ConfigError(
            f"--latent-shape {' '.join(map(str, values))} has a non-positive size; every one of B C F H W must be >= 1"
        )
    return values  # type: ignore[return-value]
