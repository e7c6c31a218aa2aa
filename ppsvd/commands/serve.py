"""`ppsvd serve`: the pipeline kept warm behind OpenAI's videos API, with a durable job queue.

The pipeline takes `run`'s options (the same aliases from commands/options.py: model, shape,
steps, layout, transport, and the per-job defaults of the conditioning) and the synthetic
model's costs; the service adds where it listens, its state dir and its limits. Jobs give the
image, seed and conditioning (docs/serve.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ppsvd import planner
from ppsvd.api.execution import check
from ppsvd.api.options import run_config
from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_MODEL_ID, DEFAULT_PARTITION
from ppsvd.console import out
from ppsvd.environment import env_world
from ppsvd.serve.config import API_KEY_ENV, DEFAULT_STATE_DIR, ServeConfig, api_key_from
from ppsvd.serve.server import serve

NAME = "serve"
SERVICE = "Service"
"""The --help panel of the service's own options (where it listens, its state, its limits)."""


def command(
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
    fps: o.Fps = 6,
    video_fps: o.VideoFps = None,
    motion_bucket_id: o.MotionBucketId = 127,
    noise_aug_strength: o.NoiseAugStrength = 0.02,
    min_guidance_scale: o.MinGuidanceScale = 1.0,
    max_guidance_scale: o.MaxGuidanceScale = 3.0,
    decode_chunk_size: o.DecodeChunkSize = None,
    nproc: o.NProc = None,
    transport: o.Transport = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
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
    step_ms: o.StepMs = 0.0,
    encode_ms: o.EncodeMs = 0.0,
    decode_ms: o.DecodeMs = 0.0,
    cfg_half_ms: o.CfgHalfMs = None,
    stage_speed: o.StageSpeed = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on. Anything but loopback needs an API key.", rich_help_panel=SERVICE
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.", rich_help_panel=SERVICE)] = 8000,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            help="Where the job store (SQLite), uploaded images and outputs live; a restart on it resumes the queue.",
            rich_help_panel=SERVICE,
        ),
    ] = DEFAULT_STATE_DIR,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help=f"Clients must send Authorization: Bearer <key>. Default: the {API_KEY_ENV} environment "
            "variable; none on loopback.",
            rich_help_panel=SERVICE,
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            help="Jobs waiting at most; beyond, a new job gets 429 with Retry-After.",
            rich_help_panel=SERVICE,
        ),
    ] = 1000,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-mb",
            help="Largest request (the image and its fields), MiB; beyond: 413.",
            rich_help_panel=SERVICE,
        ),
    ] = 20.0,
    max_image_pixels: Annotated[
        int,
        typer.Option(
            "--max-image-pixels",
            help="Largest input image, width x height, checked before decoding; beyond: 413.",
            rich_help_panel=SERVICE,
        ),
    ] = 40_000_000,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout",
            help="On SIGTERM/SIGINT: seconds the jobs in flight may take to finish before the workers are stopped.",
            rich_help_panel=SERVICE,
        ),
    ] = 120.0,
    allow_image_urls: Annotated[
        bool,
        typer.Option(
            "--allow-image-urls",
            help="Accept an image given as an http(s) URL (the server fetches it). Off: uploads and data: URLs only.",
            **o.FLAG,
            rich_help_panel=SERVICE,
        ),
    ] = False,
    debug: o.Debug = False,
) -> int:
    """Serve videos over OpenAI's videos API (POST /v1/videos ...), the pipeline loaded once and kept warm.

    Workers start and load the model once; jobs stream into the pipeline as they arrive (a free
    stage 0 or replica takes the next queued one). Jobs, their images and outputs live in
    --state-dir (SQLite), written before a job's id is returned: after a crash or a kill, a start
    on the same state dir runs every accepted job exactly once, with the same bytes. SIGTERM or
    Ctrl-C drains (the jobs in flight finish, the queue is kept). The official openai client works
    unchanged: client.videos.create_and_poll(...), client.videos.download_content(id). On a CPU
    machine: ppsvd serve --model-id tiny --device cpu. Under torchrun every rank runs this
    command and rank 0 hosts the service. See docs/serve.md.
    """
    if not debug:
        # The workers' and the store's C++ logging (a store wait that times out is routine here).
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    world = env_world()  # under torchrun: every rank runs this command, rank 0 hosts the service
    synthetic = {
        "step_ms": step_ms,
        "encode_ms": encode_ms,
        "decode_ms": decode_ms,
        "cfg_half_ms": cfg_half_ms,
        "stage_speed": o.parse_float_list("--stage-speed", stage_speed) if stage_speed else (),
    }
    run = run_config(
        None,
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
        num_samples=1,
        fps=fps,
        video_fps=video_fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        min_guidance_scale=min_guidance_scale,
        max_guidance_scale=max_guidance_scale,
        decode_chunk_size=decode_chunk_size,
        save_frames=False,
        save_video=True,
        save_latents=True,
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
        output_dir=state_dir,
        timeout=timeout,
        max_in_flight=max_in_flight,
        stages_per_gpu=stages_per_gpu,
        compile=compile,
        bind_host=bind_host,
        stall_timeout_s=stall_timeout,
        zmq_endpoint=zmq_endpoint,
        progress=False,
        debug=debug,
        **{name: value for name, value in synthetic.items() if value},
    )
    if world is not None:
        run = run.replace(nproc=world[1])  # the workers are torchrun's ranks
    # A stream has no end: --strategy auto picks the layout of the best steady state (many samples).
    run, reason = planner.resolve_strategy(run.replace(num_samples=1000), None if world is None else world[1])
    if reason is not None and (world is None or world[0] == 0):
        out.print(reason, style="dim", soft_wrap=True)
    run = run.replace(num_samples=1)
    check(run)  # devices, model files and shapes, memory: one line before anything starts
    config = ServeConfig(
        run=run,
        host=host,
        port=port,
        state_dir=state_dir,
        api_key=api_key_from(api_key),
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        max_image_pixels=max_image_pixels,
        drain_timeout_s=drain_timeout,
        allow_image_urls=allow_image_urls,
    ).validate(listens=world is None or world[0] == 0)
    code = serve(config, None if world is None else (world[0], world[1]))
    # Leave as a worker does: the supervisor's and the agent's threads may still be winding down,
    # and an interpreter shutdown under them can hang or abort; every record is committed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
