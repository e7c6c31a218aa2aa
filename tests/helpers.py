"""Shared by the multi-process tests: a small synthetic config and its single-process reference."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ppsvd.config import RunConfig
from ppsvd.models.base import build_stage_model
from ppsvd.planning.steps import partition_steps

SMALL_SHAPE = (1, 4, 2, 8, 8)


def small_config(tmp_path: Path, **changes) -> RunConfig:
    base = dict(
        model="synthetic",
        total_steps=28,
        latent_shape=SMALL_SHAPE,
        num_samples=5,
        seed=7,
        step_ms=0.0,
        output_dir=tmp_path,
        show_progress=False,
        timeout_s=60.0,
    )
    base.update(changes)
    return RunConfig.from_options(**base).validate()


def reference_latents(config: RunConfig) -> dict[int, torch.Tensor]:
    """Every sample computed in this process by one stage that runs all steps."""
    plan = partition_steps(config.job.total_steps, 1)
    model = build_stage_model(config, plan, 0, torch.device("cpu"))
    return {
        i: model.finalize(model.run_steps(model.prepare(i), plan.ranges[0])).latents
        for i in range(config.job.num_samples)
    }


def read_latents(run_dir: Path) -> dict[int, torch.Tensor]:
    """Every sample's final latent by index (read from each file's metadata: names follow the inputs)."""
    from safetensors import safe_open

    found = {}
    for f in sorted((Path(run_dir) / "latents").glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            index = int(handle.metadata()["index"])
        found[index] = load_file(str(f))["latents"]
    return found


def run_cli(capsys, *argv):
    """ppsvd's main() in this process: (exit code, stdout, stderr)."""
    import pytest

    from ppsvd.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err
