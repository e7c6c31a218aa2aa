"""Options shared by several commands, as Annotated aliases (one definition, one help text).

Choices are Literal types built from config's tuples, so --help lists them and a wrong value is
refused with the list; boolean options are flags (metavar "" keeps '<bool>' out of the help).
A help text states the default only where Typer's own [default: ...] cannot (None = decided later).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ppsvd.api.options import KEYWORD_FIELDS
from ppsvd.config import (
    DEVICES,
    DTYPES,
    LOG_FORMATS,
    STRATEGIES,
    TRANSPORTS,
    WEIGHTS,
    ZMQ_ENDPOINTS,
)
from ppsvd.errors import ConfigError
from ppsvd.planning.layouts import GOALS

FLAG = {"metavar": ""}
"""Option settings of a boolean flag: no '<bool>' placeholder in --help (a flag takes no value)."""

TotalSteps = Annotated[
    int,
    typer.Option(
        "--total-steps",
        help="Denoising steps T, split over the stages (the benchmark uses 28: divisible by 1, 2, 4, 7).",
    ),
]
LatentShape = Annotated[
    tuple[int, int, int, int, int],
    typer.Option(
        "--latent-shape", help="B C F H W: videos per sample, latent channels, frames, latent height, latent width."
    ),
]
NumSamples = Annotated[int, typer.Option("--num-samples", help="Samples to generate; sample i uses seed + i.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed of sample 0.")]
NProc = Annotated[
    int | None,
    typer.Option("--nproc", help="Stages (one process, one GPU each). Under torchrun: the world size. Default 1."),
]
Transport = Annotated[
    Literal[TRANSPORTS] | None,
    typer.Option("--transport", help="Default: nccl when every stage has a GPU, else gloo."),
]
Device = Annotated[
    Literal[DEVICES] | None, typer.Option("--device", help="Default: cuda when torch sees a GPU, else cpu.")
]
Dtype = Annotated[Literal[DTYPES] | None, typer.Option("--dtype", help="Default: fp16 on CUDA, fp32 on CPU.")]
Weights = Annotated[
    Literal[WEIGHTS],
    typer.Option(
        "--weights",
        help="pretrained, or random: the model's architecture with random weights (timing without a download).",
    ),
]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Each run writes a new directory under this one.")]
ModelId = Annotated[
    str,
    typer.Option(
        "--model-id",
        "--model",
        help="Hub id (through the Hugging Face cache) or local directory; 'tiny' for the embedded small SVD; "
        "'synthetic' for the CPU stand-in.",
    ),
]
Timeout = Annotated[
    float, typer.Option("--timeout", help="Longest single wait in seconds (receive, send, rendezvous).")
]
StepMs = Annotated[
    float, typer.Option("--step-ms", help="Synthetic model: wall time per step in ms, spent without using the CPU.")
]
BindHost = Annotated[
    str | None,
    typer.Option(
        "--bind-host",
        help="zmq tcp: address to bind. Default: loopback when the sending stage is on this host, else this host's "
        "address toward the rendezvous.",
    ),
]
StallTimeout = Annotated[
    float,
    typer.Option(
        "--stall-timeout",
        help="A stage in the middle of its steps that makes no step for max(this, 20 x its median step) seconds is "
        "named as hung.",
    ),
]
ZmqEndpoint = Annotated[
    Literal[ZMQ_ENDPOINTS], typer.Option("--zmq-endpoint", help="zmq: ipc (one host), tcp (across hosts) or auto.")
]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.", **FLAG)]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No live progress (summary only).", **FLAG)]
LogFormat = Annotated[
    Literal[LOG_FORMATS],
    typer.Option(
        "--log-format",
        help="Progress as Rich bars, plain lines at a steady interval, or JSON lines (then the summary as one JSON "
        "line); auto: rich on a terminal, plain otherwise (a job's log file).",
    ),
]
ProgressInterval = Annotated[
    float, typer.Option("--progress-interval", help="Seconds between progress lines (plain and json formats).")
]

Strategy = Annotated[
    Literal[STRATEGIES],
    typer.Option(
        "--strategy",
        help="pipeline (split steps over stages), data (whole samples from a shared work queue), cfg (each step's two "
        "guidance halves on two processes: shorter videos' latency), or auto (the layout the cost model "
        "predicts best for --goal).",
    ),
]
PipelineStages = Annotated[
    int | None,
    typer.Option(
        "--pipeline-stages",
        help="Stages per pipeline (a process each, or a guidance pair with --strategy cfg); with --replicas makes "
        "hybrids, e.g. --nproc 8 --strategy cfg --pipeline-stages 4.",
    ),
]
Replicas = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        help="Copies of the layout that take samples from one work queue, e.g. --nproc 8 --strategy pipeline "
        "--replicas 2 (2 x 4 stages).",
    ),
]
Goal = Annotated[
    Literal[GOALS],
    typer.Option(
        "--goal", help="--strategy auto: shortest makespan of all samples (throughput) or of one video (latency)."
    ),
]
CfgHalfMs = Annotated[
    float | None,
    typer.Option(
        "--cfg-half-ms",
        help="Synthetic model: one guidance half's step (batch 1) in ms. Default: --step-ms x 114/162 (H200, SVD-XT 14 "
        "frames 512x512).",
    ),
]
MaxInFlight = Annotated[
    int,
    typer.Option(
        "--max-in-flight", help="Messages a stage may have queued for sending before it waits (back-pressure)."
    ),
]

# -- how the steps are split, and what the work costs (ppsvd.planning.costs) ---------------------------------
Partition = Annotated[
    str,
    typer.Option(
        "--partition",
        help="How steps are split over stages: auto (by measured or known costs: a costly decode gets fewer steps), "
        "even, or sizes such as 4,5,5,5,5,3,1.",
    ),
]
CostsFrom = Annotated[
    str | None,
    typer.Option(
        "--costs-from",
        help="A previous run's directory: plan with the costs its timeline.json measured (instead of measuring at the "
        "start).",
    ),
]
EncodeMs = Annotated[
    float,
    typer.Option(
        "--encode-ms",
        help="Synthetic model: stage 0's time per sample to prepare it (SVD's image encode), in ms, spent like "
        "--step-ms.",
    ),
]
DecodeMs = Annotated[
    float,
    typer.Option(
        "--decode-ms",
        help="Synthetic model: the last stage's time per sample to finish it (SVD's VAE decode), in ms, spent like "
        "--step-ms.",
    ),
]
StageSpeed = Annotated[
    str | None,
    typer.Option(
        "--stage-speed",
        help="Synthetic model: relative speed of each stage's device, e.g. 1,1,1,0.5 (mixed GPUs); every cost of a "
        "stage is divided by it.",
    ),
]
Resume = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run in this directory (one an interrupted run left): its settings, only the samples it "
        "lacks; "
        "the outputs equal an uninterrupted run's. Options that change samples must match it or be left out.",
    ),
]


# -- the model and what every sample is made with (run and serve) ----------------------------------
_DIFFUSERS = "diffusers' StableVideoDiffusionPipeline(...)(image, "

Revision = Annotated[
    str | None,
    typer.Option(
        "--revision",
        help="Hub revision of --model-id (branch, tag or commit), as from_pretrained(revision=...). Default: main.",
    ),
]
Variant = Annotated[
    str | None,
    typer.Option(
        "--variant",
        help="Weights variant, as from_pretrained(variant=...), e.g. fp16. Default: fp16 weights for an fp16 run when "
        "the model has them, else the full-precision ones.",
    ),
]
NumFrames = Annotated[
    int | None,
    typer.Option("--num-frames", help=f"Frames per video, as {_DIFFUSERS}num_frames=...). Default 14 (tiny: 4)."),
]
Height = Annotated[
    int | None,
    typer.Option(
        "--height",
        help=f"Video height in pixels, divisible by 8, as {_DIFFUSERS}height=...). Default 512 (tiny: 64).",
    ),
]
Width = Annotated[
    int | None,
    typer.Option(
        "--width", help=f"Video width in pixels, divisible by 8, as {_DIFFUSERS}width=...). Default 512 (tiny: 64)."
    ),
]
NumInferenceSteps = Annotated[
    int | None,
    typer.Option(
        "--num-inference-steps",
        help=(
            f"Denoising steps, as {_DIFFUSERS}num_inference_steps=...); the same setting as --total-steps. Default 28."
        ),
    ),
]
TotalStepsOrNone = Annotated[
    int | None,
    typer.Option(
        "--total-steps",
        help="Denoising steps T, split over the stages: the benchmark's name for --num-inference-steps. Default 28 "
        "(divisible by 1, 2, 4 and 7).",
    ),
]
LatentShapeOrNone = Annotated[
    tuple[int, int, int, int, int] | None,
    typer.Option(
        "--latent-shape",
        help="B C F H W, the benchmark's way to give the size: videos per sample, latent channels, frames, height and "
        "width over the VAE scale factor (8 for SVD). Default 1 4 14 64 64, i.e. num_frames=14, height=512, "
        "width=512 (tiny: 1 4 4 8 8).",
    ),
]
Fps = Annotated[
    int,
    typer.Option(
        "--fps",
        help=(
            "fps conditioning, as diffusers' fps= (the UNet sees fps-1); also the MP4's frame rate unless --video-fps."
        ),
    ),
]
VideoFps = Annotated[
    int | None,
    typer.Option(
        "--video-fps", help="Playback frame rate of the MP4s, as export_to_video(frames, fps=...). Default: --fps."
    ),
]
MotionBucketId = Annotated[int, typer.Option("--motion-bucket-id", help="Motion conditioning, 0..255.")]
NoiseAugStrength = Annotated[float, typer.Option("--noise-aug-strength", help="Noise added to the conditioning image.")]
MinGuidanceScale = Annotated[float, typer.Option("--min-guidance-scale", help="Guidance for the first frame.")]
MaxGuidanceScale = Annotated[
    float,
    typer.Option("--max-guidance-scale", help="Guidance for the last frame (classifier-free guidance when > 1)."),
]
DecodeChunkSize = Annotated[
    int | None, typer.Option("--decode-chunk-size", help="Frames decoded at a time. Default: all.")
]

# -- where stages run, and how the UNet runs -------------------------------------------------------
StagesPerGpu = Annotated[
    int,
    typer.Option(
        "--stages-per-gpu",
        help="CUDA: stages sharing one GPU (stage k on GPU k // this), e.g. --nproc 3 --stages-per-gpu 3 on one GPU. "
        "Needs --transport gloo or zmq (NCCL refuses two ranks on one device); memory is checked for all of them.",
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the UNet of every stage (regional compilation where diffusers offers it, else the whole "
        "UNet): faster steps after a one-time compile, reported apart. Not bitwise: within a documented bound of "
        "diffusers' results (`ppsvd verify --compile` measures it). Off: eager and bitwise.",
        **FLAG,
    ),
]


def parse_float_list(flag: str, text: str) -> tuple[float, ...]:
    """'1,1,0.5' -> (1.0, 1.0, 0.5) with a one-line error for anything else."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated numbers, e.g. {flag} 1,1,1,0.5") from None
    if not values:
        raise ConfigError(f"{flag} {text!r} is empty; give one number per stage, e.g. {flag} 1,1,1,0.5")
    return values


PARAM_FIELDS = {
    **KEYWORD_FIELDS,
    "image": "images",
    "no_progress": "show_progress",
    "stall_timeout": "stall_timeout_s",
    "progress_interval": "progress_interval_s",
}
"""A command's parameter -> the RunConfig field it sets, where the names differ."""


def explicit_options(ctx: typer.Context) -> dict[str, str]:
    """The options this command line (or the environment) set: RunConfig field -> flag (what
    --resume may take from the command line, or refuse)."""
    found = {}
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        # By name: Typer may vendor its own click, whose ParameterSource is another enum.
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            found[PARAM_FIELDS.get(param.name, param.name)] = param.opts[0] if param.opts else param.name
    return found
