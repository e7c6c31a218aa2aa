"""`ppsvd simulate`: the pipeline on CPU with a stand-in model, for machines without GPUs."""

from __future__ import annotations

from pathlib import Path

from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_LATENT_SHAPE, DEFAULT_TOTAL_STEPS, RunConfig

NAME = "simulate"


def command(
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    latent_shape: o.LatentShape = DEFAULT_LATENT_SHAPE,
    num_samples: o.NumSamples = 8,
    seed: o.Seed = 0,
    nproc: o.NProc = None,
    transport: o.Transport = None,
    device: o.Device = "cpu",
    dtype: o.Dtype = "fp32",
    step_ms: o.StepMs = 20.0,
    model: o.ModelId = "synthetic",
    strategy: o.Strategy = "pipeline",
    output_dir: o.OutputDir = Path("ppsvd-runs"),
    timeout: o.Timeout = 600.0,
    max_in_flight: o.MaxInFlight = 2,
    bind_host: o.BindHost = "127.0.0.1",
    zmq_endpoint: o.ZmqEndpoint = "auto",
    no_progress: o.NoProgress = False,
    debug: o.Debug = False,
) -> int:
    """Run the pipeline on CPU with the synthetic stand-in model (default 4 stages, 20 ms per step).

    Each step costs --step-ms of wall time without using the CPU, like a GPU kernel, so
    scaling over stages shows even on a 2-core machine. Works self-launched (--nproc N) and
    as a worker under torchrun (torchrun --nproc_per_node=4 -m ppsvd simulate ...).
    """
    from ppsvd.commands.common import execute, resolve_nproc

    config = RunConfig(
        model=model,
        total_steps=total_steps,
        latent_shape=tuple(latent_shape),
        num_samples=num_samples,
        seed=seed,
        nproc=resolve_nproc(4 if nproc is None and not _under_torchrun() else nproc),
        transport=transport,
        device=device or "cpu",
        dtype=dtype,
        strategy=strategy,
        step_ms=step_ms if model == "synthetic" else 0.0,
        output_dir=output_dir,
        timeout_s=timeout,
        max_in_flight=max_in_flight,
        bind_host=bind_host,
        zmq_endpoint=zmq_endpoint,
        show_progress=not no_progress,
        debug=debug,
        save_video=False,
    )
    return execute(config)


def _under_torchrun() -> bool:
    from ppsvd.config import env_world

    return env_world() is not None
