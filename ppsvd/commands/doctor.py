"""`ppsvd doctor`: check this machine for a planned run (versions, GPUs, P2P, env, model, memory, disk, transports)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppsvd.commands import options as o
from ppsvd.config import DEFAULT_MODEL_ID, DEFAULT_TOTAL_STEPS, RunConfig, check_latent_shape, default_latent_shape
from ppsvd.console import err, out
from ppsvd.doctor import diagnose
from ppsvd.doctor.render import render, to_json_text
from ppsvd.errors import ConfigError

NAME = "doctor"


def command(
    nproc: o.NProc = None,
    model: o.ModelId = DEFAULT_MODEL_ID,
    weights: Annotated[
        str, typer.Option("--weights", help="pretrained, or random (as `run`: nothing to download).")
    ] = "pretrained",
    latent_shape: Annotated[
        tuple[int, int, int, int, int] | None,
        typer.Option(
            "--latent-shape", help="B C F H W of the planned run. Default 1 4 14 64 64 (tiny: its own small shape)."
        ),
    ] = None,
    dtype: o.Dtype = None,
    device: o.Device = None,
    transport: o.Transport = None,
    total_steps: o.TotalSteps = DEFAULT_TOTAL_STEPS,
    num_samples: o.NumSamples = 1,
    output_dir: o.OutputDir = Path("ppsvd-runs"),
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (for machines) instead of the table.", **o.FLAG)
    ] = False,
    no_live: Annotated[
        bool, typer.Option("--no-live", help="Skip the live transport check (2 local workers per transport).", **o.FLAG)
    ] = False,
    live_timeout: Annotated[
        float,
        typer.Option("--live-timeout", help="Seconds after which a transport that has not finished counts as failed."),
    ] = 10.0,
    hang: Annotated[
        list[str] | None,
        typer.Option(
            "--simulate-hang",
            hidden=True,
            help="Testing: force this live check (gloo, zmq-ipc, zmq-tcp, nccl) to hang.",
        ),
    ] = None,
    debug: o.Debug = False,
) -> int:
    """Check this machine for a planned run, in seconds, before a long run finds the problem.

    Checks versions (Python, torch, CUDA, driver, NCCL, diffusers, transformers, pyzmq), the GPUs
    (memory, compute capability, peer-to-peer and NVLink between every pair), the environment
    variables that change a run, the model in the Hugging Face cache, the memory the planned
    --model-id/--dtype/--latent-shape needs per GPU, disk space, and measures every transport
    live between 2 local workers. Every problem comes with its fix. Exit code 0 when everything
    the planned run needs passes, 1 otherwise. Works without a GPU too.
    """

    if latent_shape is None:
        latent_shape = default_latent_shape(model)
    shape = check_latent_shape(latent_shape)
    if live_timeout <= 0:
        raise ConfigError(f"--live-timeout {live_timeout:g} must be positive seconds")
    labels = ("gloo", "zmq-ipc", "zmq-tcp", "nccl")
    for label in hang or ():
        if label not in labels:
            raise ConfigError(f"--simulate-hang {label!r} is not one of {', '.join(labels)}")
    n = 1 if nproc is None else nproc
    config = RunConfig.from_options(
        model=model,
        weights=weights,
        nproc=n,
        latent_shape=shape,
        dtype=dtype,
        device=device,
        transport=transport,
        total_steps=total_steps,
        num_samples=num_samples,
        output_dir=output_dir,
    )
    # The run's own checks of the same options (bad input -> ConfigError -> one line, exit 2). The
    # device is not known yet (it needs torch; doctor resolves it): check as a CUDA run unless --device says otherwise.
    config.replace(device=device or "cuda").validate()

    progress = None if json_out else (lambda text: err.print(f"[dim]doctor: {text}...[/]", markup=True))
    report = diagnose(config, live=not no_live, live_timeout=live_timeout, hang=tuple(hang or ()), on_progress=progress)
    if json_out:
        out.print(to_json_text(report), markup=False, highlight=False, soft_wrap=True, emoji=False)
    else:
        render(report, out)
    return report.exit_code
