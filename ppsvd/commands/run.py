"""`ppsvd run`: generate SVD videos (images in, MP4s out) with the steps pipelined over N GPUs.

Options carry diffusers' names where diffusers has one (StableVideoDiffusionPipeline.__call__:
num_frames, height, width, num_inference_steps, fps, motion_bucket_id, ...; from_pretrained:
revision, variant); the benchmark's --total-steps and --latent-shape stay and may be combined with
them when they agree. The config is built by ppsvd.api.run_config, the same as ppsvd.run().
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppsvd.api.execution import execute
from ppsvd.api.options import run_config
from ppsvd.commands import options as o
from ppsvd.commands.tables import show_summary
from ppsvd.config import DEFAULT_MODEL_ID, DEFAULT_PARTITION

NAME = "run"


Image = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        help="Input image: a file, a directory, a glob or an http(s) URL; repeatable. One video per image unless "
        "--num-samples says otherwise (sample i uses image i mod count). Default: the built-in test image.",
    ),
]
Inputs = Annotated[
    Path | None,
    typer.Option(
        "--inputs",
        help="Job file, one sample per entry: CSV with a header (image,seed,motion_bucket_id,fps,noise_aug_strength; "
        'only image required) or JSON lines ({"image": "cat.png", "seed": 3}). Relative image paths are '
        "relative to the file. Instead of --image.",
    ),
]
NumSamples = Annotated[
    int | None,
    typer.Option(
        "--num-samples",
        help="Samples to generate; sample i uses image i mod count and seed + i. Default: one per input image (1 "
        "without --image).",
    ),
]
SaveFrames = Annotated[
    bool, typer.Option("--save-frames/--no-save-frames", help="Also write every frame as PNG (lossless).", **o.FLAG)
]
SaveVideo = Annotated[bool, typer.Option("--save-video/--no-save-video", help="Write an MP4 per video.", **o.FLAG)]
SaveLatents = Annotated[
    bool,
    typer.Option("--save-latents/--no-save-latents", help="Write each sample's final latent (safetensors).", **o.FLAG),
]


def command(
    ctx: typer.Context,
    image: Image = None,
    inputs: Inputs = None,
    model: o.ModelId = DEFAULT_MODEL_ID,
    revision: o.Revision = None,
    variant: o.Variant = None,
    weights: o.Weights = "pretrained",
    num_frames: o.NumFrames = None,
    height: o.Height = None,
    width: o.Width = None,
    num_inference_steps: o.NumInferenceSteps = None,
    total_steps: o.TotalStepsOrNone = None,
    latent_shape: o.LatentShapeOrNone = None,
    num_samples: NumSamples = None,
    seed: o.Seed = 0,
    fps: o.Fps = 6,
    video_fps: o.VideoFps = None,
    motion_bucket_id: o.MotionBucketId = 127,
    noise_aug_strength: o.NoiseAugStrength = 0.02,
    min_guidance_scale: o.MinGuidanceScale = 1.0,
    max_guidance_scale: o.MaxGuidanceScale = 3.0,
    decode_chunk_size: o.DecodeChunkSize = None,
    save_frames: SaveFrames = False,
    save_video: SaveVideo = True,
    save_latents: SaveLatents = True,
    nproc: o.NProc = None,
    transport: o.Transport = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    output_dir: o.OutputDir = Path("ppsvd-runs"),
    timeout: o.Timeout = 600.0,
    max_in_flight: o.MaxInFlight = 2,
    stages_per_gpu: o.StagesPerGpu = 1,
    compile: o.Compile = False,
    bind_host: o.BindHost = None,
    stall_timeout: o.StallTimeout = 60.0,
    zmq_endpoint: o.ZmqEndpoint = "auto",
    strategy: o.Strategy = "pipeline",
    pipeline_stages: o.PipelineStages = None,
    replicas: o.Replicas = None,
    goal: o.Goal = "throughput",
    partition: o.Partition = DEFAULT_PARTITION,
    costs_from: o.CostsFrom = None,
    log_format: o.LogFormat = "auto",
    progress_interval: o.ProgressInterval = 10.0,
    no_progress: o.NoProgress = False,
    resume: o.Resume = None,
    debug: o.Debug = False,
) -> int:
    """Generate videos with Stable Video Diffusion, the denoising steps pipelined over N GPUs.

    The videos equal what diffusers' StableVideoDiffusionPipeline produces for the same image,
    seed and settings, for any --nproc and transport. The defaults (the benchmark's: 28 steps, 14
    frames at 512x512, fps 6) equal pipe(image.resize((512, 512)), num_frames=14, height=512,
    width=512, num_inference_steps=28, fps=6, generator=torch.Generator().manual_seed(seed)).
    Outputs are named <image stem>-s<seed>. Also runs under torchrun
    (torchrun --nproc_per_node=7 -m ppsvd run ...). --model-id tiny runs an embedded small SVD
    on CPU in seconds.
    """
    config = run_config(
        image,
        inputs=inputs,
        model_id=model,
        revision=revision,
        variant=variant,
        weights=weights,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        total_steps=total_steps,
        latent_shape=latent_shape,
        num_samples=num_samples,
        seed=seed,
        fps=fps,
        video_fps=video_fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        min_guidance_scale=min_guidance_scale,
        max_guidance_scale=max_guidance_scale,
        decode_chunk_size=decode_chunk_size,
        save_frames=save_frames,
        save_video=save_video,
        save_latents=save_latents,
        nproc=nproc,
        transport=transport,
        device=device,
        dtype=dtype,
        strategy=strategy,
        pipeline_stages=pipeline_stages,
        replicas=replicas,
        goal=goal,
        partition=partition,
        costs_from=costs_from,
        output_dir=output_dir,
        timeout=timeout,
        max_in_flight=max_in_flight,
        stages_per_gpu=stages_per_gpu,
        compile=compile,
        bind_host=bind_host,
        stall_timeout_s=stall_timeout,
        zmq_endpoint=zmq_endpoint,
        log_format=log_format,
        progress_interval_s=progress_interval,
        progress=not no_progress,
        debug=debug,
    )
    execute(
        config,
        resume=resume,
        explicit=o.explicit_options(ctx),
        command=NAME,
        summary=show_summary,
        exit_when_done=True,
    )
    return 0
