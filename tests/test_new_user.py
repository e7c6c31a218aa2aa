"""What a new user does in the first hour, done the way they do it (issue 18): the documented
snippets saved as scripts and run with `python file.py`, `--log-format json` piped into a JSON
parser, `--help` in an 80-column terminal, Ctrl-C while the workers start, the embedded tiny
model against diffusers' own pipeline, a PIL image handed to the API, `ppsvd plan` with run's
layout options. Every check drives the CLI or a script in a fresh process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer.main

from ppsvd.cli import app
from tests.helpers import read_latents

ROOT = Path(__file__).parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
"""Bitwise on CPU needs the same intra-op thread count on both sides: ppsvd's stages run 1."""


def ppsvd_cli(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ppsvd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env or ONE_THREAD,
    )


# -- the embedded tiny model is diffusers' pipeline, bitwise ------------------------------------------


DIFFUSERS_SCRIPT = """
import sys
import torch
from diffusers import StableVideoDiffusionPipeline
from safetensors.torch import save_file

from ppsvd.io.images import builtin_image
from ppsvd.models.tiny import save_tiny

torch.set_num_threads(1)  # as ppsvd's stages
repo = save_tiny(sys.argv[1])
pipe = StableVideoDiffusionPipeline.from_pretrained(repo)
pipe.set_progress_bar_config(disable=True)
image = builtin_image(64, 64)
latents = pipe(
    image, num_frames=4, height=64, width=64, num_inference_steps=3, fps=6,
    generator=torch.Generator("cpu").manual_seed(5), output_type="latent",
).frames
save_file({"latents": latents.contiguous()}, sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_tiny_model_equals_diffusers_pipeline_bitwise(tmp_path):
    """`ppsvd run --model-id tiny` (2 stages) against StableVideoDiffusionPipeline.from_pretrained of
    the same weights written by save_tiny, in a process of its own with 1 intra-op thread."""
    from safetensors.torch import load_file

    done = ppsvd_cli(
        "run",
        "--model-id",
        "tiny",
        "--device",
        "cpu",
        "--nproc",
        "2",
        "--num-inference-steps",
        "3",
        "--seed",
        "5",
        "--output-dir",
        str(tmp_path / "runs"),
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    ours = read_latents(run_dir)[0]
    script = tmp_path / "reference.py"
    script.write_text(DIFFUSERS_SCRIPT)
    ref = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "saved-tiny"), str(tmp_path / "ref.safetensors")],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=ROOT,
        env=ONE_THREAD,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    theirs = load_file(str(tmp_path / "ref.safetensors"))["latents"]
    assert ours.shape == theirs.shape == (1, 4, 4, 8, 8)
    assert torch.equal(ours, theirs), f"max |diff| {(ours - theirs).abs().max().item():.3g}"


def test_the_embedded_model_is_written_once_and_a_damaged_copy_is_rebuilt(tmp_path, monkeypatch):
    """tiny_repo() materialises save_tiny's repository in ppsvd's cache folder; a truncated weights
    file there is noticed (checksums) and the repository made again, never loaded half."""
    from ppsvd.models import tiny

    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path / "cache"))
    repo = tiny.tiny_repo()
    assert repo.parent == tmp_path / "cache" and (repo / "model_index.json").is_file()
    weights = repo / "unet" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    assert tiny.tiny_repo() == repo and weights.stat().st_size == size  # reused as it is
    weights.write_bytes(weights.read_bytes()[: size // 2])
    assert tiny.tiny_repo() == repo and weights.stat().st_size == size
    assert [p.name for p in repo.parent.iterdir()] == [repo.name]  # no temporary folders left
