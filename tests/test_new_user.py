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


# -- help that fits a terminal --------------------------------------------------------------------


def test_help_at_80_columns_shows_every_option_name_whole_in_panels(tmp_path):
    """Every command's --help in an 80-column terminal: each option's names (and --no- forms)
    whole, nothing cut with an ellipsis, options grouped in panels, and no '<bool>' after a flag."""
    commands = typer.main.get_command(app).commands
    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": ""}
    for name, command in commands.items():
        shown = ppsvd_cli(name, "--help", cwd=tmp_path, timeout=60, env=env)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert max(len(line) for line in text.splitlines()) <= 80, name
        assert "…" not in text, f"{name}: " + next(line for line in text.splitlines() if "…" in line)
        assert "<bool>" not in text, name
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for flag in (*param.opts, *param.secondary_opts):
                assert re.search(re.escape(flag) + r"(?![\w-])", text), f"ppsvd {name} --help cuts {flag}"
        if name in ("run", "simulate", "serve"):
            for panel in ("Inputs", "Generation", "Outputs" if name == "run" else "Parallelism", "Logging"):
                assert f"─ {panel}" in text, (name, panel)
    text = ppsvd_cli("run", "--help", cwd=tmp_path, timeout=60, env=env).stdout
    assert re.search(r"--latent-shape +B C F H W", text)  # five values, not a comma-separated list


# -- --log-format json: stdout is JSON lines --------------------------------------------------------


def _json_lines(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]  # every line, or the test fails naming it


def test_simulate_log_format_json_prints_only_json_lines(tmp_path):
    done = ppsvd_cli(
        "simulate",
        "--nproc",
        "2",
        "--num-samples",
        "2",
        "--total-steps",
        "4",
        "--step-ms",
        "1",
        "--log-format",
        "json",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = _json_lines(done.stdout)
    events = [r["event"] for r in records]
    assert events[0] == "notice" and "transport: gloo" in records[0]["message"]
    assert "start" in events and events[-1] == "summary" and records[-1]["metrics"]["completed"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_log_format_json_with_a_costless_auto_choice(tmp_path):
    """`ppsvd run --strategy auto` without known costs: stdout parses line by line, and the choice
    is explained in step times, not made-up seconds."""
    done = ppsvd_cli(
        "run",
        "--model-id",
        "tiny",
        "--device",
        "cpu",
        "--nproc",
        "2",
        "--num-samples",
        "2",
        "--num-inference-steps",
        "2",
        "--strategy",
        "auto",
        "--log-format",
        "json",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = _json_lines(done.stdout)
    auto = next(r["message"] for r in records if r["event"] == "notice" and "--strategy auto" in r["message"])
    assert "step times" in auto and "no costs known" in auto and " ms" not in auto and " s vs" not in auto, auto
    assert records[-1]["event"] == "summary" and records[-1]["metrics"]["completed"] == 2


# -- ppsvd plan takes run's layout options -------------------------------------------------------------


def test_plan_takes_the_strategy_and_works_without_costs(tmp_path):
    done = ppsvd_cli("plan", "--strategy", "cfg", "--nproc", "2", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "cfg ◀" in text and "--strategy cfg: 1 guidance pair (cfg) predicts" in text
    assert "denoising steps" in text or "step times" in text
    data = json.loads(
        ppsvd_cli(
            "plan",
            "--nproc",
            "4",
            "--strategy",
            "pipeline",
            "--replicas",
            "2",
            "--step-ms",
            "100",
            "--json",
            cwd=tmp_path,
            timeout=60,
        ).stdout
    )
    assert data["layout"]["layout"] == "2xp2" and data["units"] == "s" and data["plan"] is None
    refused = ppsvd_cli("plan", "--strategy", "cfg", "--nproc", "3", cwd=tmp_path, timeout=60)
    assert refused.returncode == 2 and "even --nproc" in refused.stderr


# -- the API in diffusers' habits ----------------------------------------------------------------------


def test_api_takes_torch_dtype_and_names_keywords_in_its_errors():
    import ppsvd

    with pytest.raises(ppsvd.ConfigError) as refused:
        ppsvd.run(model_id="tiny", device="cpu", num_frames=0)
    assert str(refused.value).startswith("num_frames=0 ") and "--" not in str(refused.value)
    with pytest.raises(ppsvd.ConfigError, match=r"torch_dtype=torch.float16 conflicts with dtype='fp32'"):
        ppsvd.run(model_id="tiny", device="cpu", torch_dtype=torch.float16, dtype="fp32")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'num_frame'; did you mean num_frames"):
        ppsvd.run(model_id="tiny", num_frame=3)
    from ppsvd.api.options import run_config

    assert run_config(model_id="tiny", device="cpu", torch_dtype=torch.bfloat16).model.dtype == "bf16"
    assert run_config(model_id="tiny", device="cpu", torch_dtype="float32").model.dtype == "fp32"
