"""What `run` and `simulate` share: check the config, then launch workers or join torchrun."""

from __future__ import annotations

import os
import sys

from ppsvd.config import RunConfig, env_world
from ppsvd.console import notice, out
from ppsvd.errors import ConfigError


def resolve_nproc(nproc: int | None) -> int:
    """--nproc, or the torchrun world size; both given must agree."""
    world = env_world()
    if world is None:
        return 1 if nproc is None else nproc
    if nproc is not None and nproc != world[1]:
        raise ConfigError(f"--nproc {nproc} differs from torchrun's world size {world[1]}; drop --nproc under torchrun")
    return world[1]


def resolve_device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def execute(config: RunConfig) -> int:
    """Validate, then run: as one torchrun worker, or by launching config.nproc local workers."""
    from ppsvd.models.base import preflight

    config.validate()
    world = env_world()
    if world is not None:
        from ppsvd.runtime.worker import torchrun_main

        rank = world[0]
        if rank == 0:
            _announce(config, world[1])
        # Every rank checks its own inputs, so a bad flag fails fast everywhere.
        preflight(config)
        code, run_dir = torchrun_main(config)
        if code == 0 and rank == 0:
            from ppsvd.commands.tables import print_summary

            print_summary(run_dir)
        # Leave the way a multiprocessing worker does: flush, then os._exit. A normal interpreter
        # shutdown runs the C++ destructors of gloo's groups and threads, and under torchrun that
        # aborted a finished run now and then ("terminate called without an active exception",
        # SIGABRT), turning success into a failure. Every output is already written and fsync'ed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    import torch

    config.check_devices(torch.cuda.device_count() if config.device == "cuda" else 0, config.nproc)
    preflight(config)
    _announce(config, config.nproc)
    from ppsvd.runtime.launch import launch
    from ppsvd.commands.tables import print_summary

    result = launch(config)
    print_summary(result.run_dir)
    return 0


def _announce(config: RunConfig, world: int) -> None:
    from ppsvd.plan import partition_steps

    if config.strategy == "pipeline":
        text = partition_steps(config.total_steps, world).notice()
        if text:
            notice(text)
    if config.transport is None and world > 1 and config.strategy == "pipeline":
        out.print(f"transport: {config.resolved_transport} (pick another with --transport)", style="dim")
