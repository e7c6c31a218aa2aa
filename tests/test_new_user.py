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
import signal
import subprocess
import sys
import time
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
    # diffusers' name for the step count is the one the error uses, not the benchmark's total_steps.
    with pytest.raises(ppsvd.ConfigError, match=r"^num_inference_steps=-1 must be a positive number"):
        ppsvd.run(model_id="tiny", device="cpu", num_inference_steps=-1)
    with pytest.raises(ppsvd.ConfigError, match=r"torch_dtype=torch.float16 conflicts with dtype='fp32'"):
        ppsvd.run(model_id="tiny", device="cpu", torch_dtype=torch.float16, dtype="fp32")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'num_frame'; did you mean num_frames"):
        ppsvd.run(model_id="tiny", num_frame=3)
    from ppsvd.api.options import run_config

    assert run_config(model_id="tiny", device="cpu", torch_dtype=torch.bfloat16).model.dtype == "bf16"
    assert run_config(model_id="tiny", device="cpu", torch_dtype="float32").model.dtype == "fp32"


# -- the Python API from a plain script, a notebook-like session, with PIL images -------------------


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_documented_python_snippets_run_as_plain_scripts(doc, tmp_path):
    """Each ```python block of the page, saved as a file and run with `python file.py` (no
    `if __name__ == "__main__":` guard): it must finish and write its videos. (Blocks that need a
    GPU and SVD-XT's weights are in docs/run.md's From-diffusers section, not here.)"""
    blocks = _python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no Python example"
    for k, code in enumerate(blocks):
        script = tmp_path / f"example_{k}.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ONE_THREAD
        )
        assert done.returncode == 0, f"{doc} block {k}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    videos = list((tmp_path / "ppsvd-runs").glob("*/videos/*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)


PIL_SESSION = """
from pathlib import Path
import ppsvd, torch
from PIL import Image
from ppsvd.io.images import builtin_image

builtin_image(96, 64).save("cat.png")
options = dict(model_id="tiny", device="cpu", nproc=2, num_frames=3, height=64, width=96, num_inference_steps=3,
               progress=False)
from_pil = ppsvd.run(Image.open("cat.png"), torch_dtype=torch.float32, **options)
from_path = ppsvd.run("cat.png", **options)
pair = ppsvd.run([Image.open("cat.png"), builtin_image(96, 64).rotate(90)], **{**options, "nproc": 1})
kept = sorted(p.name for p in (from_pil.run_dir / "inputs").iterdir())
print("names", [s.name for s in from_pil.samples], [s.name for s in pair.samples], kept)
print("image", Path(from_pil.samples[0].image).resolve() == (from_pil.run_dir / "inputs" / "cat.png").resolve())
print("same", torch.equal(from_pil.samples[0].latents(), from_path.samples[0].latents()))
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pil_images_from_a_notebook_like_session(tmp_path):
    """`python -c` (code with no file, as a notebook runs it): ppsvd.run takes a PIL image, and a list
    of them, keeps them in the run directory under the name of the file they came from, and gives
    the latents a path gives; torch_dtype is taken as from_pretrained takes it."""
    done = subprocess.run(
        [sys.executable, "-c", PIL_SESSION], capture_output=True, text=True, timeout=380, cwd=tmp_path, env=ONE_THREAD
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["names"] == "['cat-s0'] ['cat-s0', 'image-1-s1'] ['cat.png']", lines
    assert lines["image"] == "True" and lines["same"] == "True", lines


# -- Ctrl-C while the workers start ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("after_s", [1.0, 3.0])
def test_ctrl_c_while_starting_is_one_line_and_130_and_leaves_no_run_directory(tmp_path, after_s):
    out = tmp_path / "runs"
    argv = ["run", "--model-id", "tiny", "--device", "cpu", "--nproc", "2", "--num-inference-steps", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppsvd", *argv, "--output-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=ONE_THREAD,
        start_new_session=True,  # a terminal's Ctrl-C signals the foreground process group
    )
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop within 60 s of Ctrl-C")
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("ppsvd: error: interrupted"), output[-3000:]
    assert not out.exists() or list(out.iterdir()) == [], list(out.rglob("*"))


@pytest.mark.parametrize("signalled", ["interrupted", "keyboard"])
def test_a_signal_wrapped_by_an_import_is_still_the_one_line(monkeypatch, capsys, signalled):
    # Ctrl-C 1 s after launch once landed inside torch's import, where Python wraps an exception
    # raised in a class's __set_name__ as a RuntimeError: still the interrupt's line and 130.
    import ppsvd.cli
    from ppsvd.errors import Interrupted
    from ppsvd.runtime.signals import STOP_SIGNALS

    def importing_torch(**_kwargs):
        inner = (
            Interrupted("interrupted by SIGINT", signal.SIGINT) if signalled == "interrupted" else KeyboardInterrupt()
        )
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("Error calling __set_name__ on 'SymNumberMemoDescriptor' instance") from exc

    monkeypatch.setattr(ppsvd.cli, "app", importing_torch)
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        with pytest.raises(SystemExit) as exited:
            ppsvd.cli.main(["run"])
    finally:  # main() ignores further signals on its way out: give pytest its handlers back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert exited.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppsvd: error: interrupted"), err
