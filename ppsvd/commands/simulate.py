"""`ppsvd simulate`: the pipeline on CPU with a stand-in model, for machines without GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ppsvd.api.execution import execute
from ppsvd.api.options import simulate_config
from ppsvd.commands import options as o
from ppsvd.commands.tables import show_summary
from ppsvd.config import (
    DEFAULT_LATENT_SHAPE,
    DEFAULT_PARTITION,
    DEFAULT_TOTAL_STEPS,
    DEVICES,
    DTYPES,
    SYNTHETIC_MODEL,
)

NAME = "simulate"

NProc = Annotated[
    int | None, typer.Option("--nproc", help="Stages (one process each). Default 4; under torchrun: the world size.")
]
Device = Annotated[Literal[DEVICES], typer.Option("--device", help="Where the stand-in's tensors live.")]


def command(
    ctx: typer.Context,
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    latent_shape: o.LatentShape = DEFAULT_LATENT_SHAPE,
    num_samples: o.NumSamples = 8,
    seed: o.Seed = 0,
    nproc: NProc = None,
    transport: o.Transport = None,
    device: Device = "cpu",
    dtype: Annotated[Literal[DTYPES] | None, typer.Option("--dtype")] = "fp32",
    step_ms: o.StepMs = 20.0,
    model: o.ModelId = SYNTHETIC_MODEL,
    strategy: o.Strategy = "pipeline",
    pipeline_stages: o.PipelineStages = None,
    replicas: o.Replicas = None,
    goal: o.Goal = "throughput",
    partition: o.Partition = DEFAULT_PARTITION,
    costs_from: o.CostsFrom = None,
    encode_ms: o.EncodeMs = 0.0,
    decode_ms: o.DecodeMs = 0.0,
    cfg_half_ms: o.CfgHalfMs = None,
    decode_chunk_size: Annotated[
        int | None,
        typer.Option(
            "--decode-chunk-size",
            help="Frames decoded at a time (a guidance pair splits the decode at these chunks). Default: all.",
        ),
    ] = None,
    stage_speed: o.StageSpeed = None,
    output_dir: o.OutputDir = Path("ppsvd-runs"),
    timeout: o.Timeout = 600.0,
    max_in_flight: o.MaxInFlight = 2,
    stages_per_gpu: o.StagesPerGpu = 1,
    compile: o.Compile = False,
    bind_host: o.BindHost = None,
    stall_timeout: o.StallTimeout = 60.0,
    zmq_endpoint: o.ZmqEndpoint = "auto",
    log_format: o.LogFormat = "auto",
    progress_interval: o.ProgressInterval = 10.0,
    no_progress: o.NoProgress = False,
    resume: o.Resume = None,
    debug: o.Debug = False,
) -> int:
    """Run the pipeline on CPU with the synthetic stand-in model (default 4 stages, 20 ms per step).

    Each step costs --step-ms of wall time without using the CPU, like a GPU kernel, so
    scaling over stages shows even on a 2-core machine. Works self-launched (--nproc N) and
    as a worker under torchrun (torchrun --nproc_per_node=4 -m ppsvd simulate ...).
    """
    config = simulate_config(
        model_id=model,
        total_steps=total_steps,
        latent_shape=tuple(latent_shape),
        num_samples=num_samples,
        seed=seed,
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
        encode_ms=encode_ms,
        decode_ms=decode_ms,
        cfg_half_ms=cfg_half_ms,
        decode_chunk_size=decode_chunk_size,
        stage_speed=o.parse_float_list("--stage-speed", stage_speed) if stage_speed else (),
        step_ms=step_ms,
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
