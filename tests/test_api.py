"""diffusers' language: its option names, every input image, the Python API, progress in logs.

One CLI run (2 stages, three images in a directory, diffusers' size and step options, a
non-square size) is checked bitwise against StableVideoDiffusionPipeline called with the same
arguments, for its file names and for progress lines that reach a pipe while it runs; the
Python API run with one of the images served over loopback HTTP must give the same latents;
ppsvd.run(resume=...) continues a stopped run from a script. The rest is fast, in-process.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import ppsvd
from ppsvd.config import RunConfig, SampleInput
from ppsvd.errors import ConfigError, InputImageError, ModelNotFoundError
from ppsvd.io.images import builtin_image, check_image, load_image
from ppsvd.io.inputs import read_inputs
from ppsvd.io.samples import plan_samples
from ppsvd.io.video import read_mp4
from ppsvd.models import tiny
from tests.helpers import read_latents, run_cli

FRAMES, HEIGHT, WIDTH, STEPS = 3, 64, 96, 4  # a non-square size: 96x64 pixels, latent 12x8
SIZE_ARGS = [
    "--num-frames",
    str(FRAMES),
    "--height",
    str(HEIGHT),
    "--width",
    str(WIDTH),
    "--num-inference-steps",
    str(STEPS),
]
NAMES = ["a-s0", "b-s1", "c-s2"]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-svd"))


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for name, size in (("a", (96, 64)), ("b", (80, 48)), ("c", (64, 64))):
        image = builtin_image(*size)
        if name == "c":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image: a directory contributes only its images")
    return folder


@pytest.fixture(scope="module")
def pipe(tiny_repo):
    from diffusers import StableVideoDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_repo)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_latents(pipe, image: Image.Image, seed: int, **kwargs) -> torch.Tensor:
    """StableVideoDiffusionPipeline(...)(image, ...) with diffusers' own argument names."""
    args = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, fps=6)
    args.update(kwargs)
    image = image.resize((args["width"], args["height"]))  # as diffusers' SVD example does
    return pipe(image, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **args).frames


@pytest.fixture(scope="module")
def cli_run(tiny_repo, inputs_dir, tmp_path_factory):
    """`ppsvd run` on a pipe (not a terminal), reading its stderr while it runs."""
    out = tmp_path_factory.mktemp("cli-out")
    cmd = [
        sys.executable,
        "-m",
        "ppsvd",
        "run",
        "--model-id",
        str(tiny_repo),
        "--image",
        str(inputs_dir),
        *SIZE_ARGS,
        "--nproc",
        "2",
        "--partition",
        "even",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--progress-interval",
        "0.5",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    stdout_lines: list[str] = []
    reader = threading.Thread(target=lambda: stdout_lines.extend(proc.stdout), daemon=True)
    reader.start()
    lines, progress_while_running = [], False
    for line in proc.stderr:  # ends when the process closes stderr
        lines.append(line)
        if line.startswith("ppsvd: progress") and proc.poll() is None:
            progress_while_running = True
    code = proc.wait(timeout=200)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert code == 0, stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    return run_dir, progress_while_running, stderr, "".join(stdout_lines)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_diffusers_names_equal_diffusers_pipeline_and_name_outputs_after_images(cli_run, pipe, inputs_dir):
    run_dir, _, _, _ = cli_run
    assert sorted(p.stem for p in (run_dir / "videos").glob("*.mp4")) == NAMES
    assert sorted(p.stem for p in (run_dir / "latents").glob("*.safetensors")) == NAMES
    latents = read_latents(run_dir)
    for index, name in enumerate("abc"):
        want = diffusers_latents(pipe, Image.open(inputs_dir / f"{name}.png").convert("RGB"), seed=index)
        assert torch.equal(latents[index], want), f"sample {index} ({name}.png) differs from diffusers"
    assert read_mp4(run_dir / "videos" / "a-s0.mp4") == (FRAMES, HEIGHT, WIDTH)
    config = json.loads((run_dir / "config.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for versions in (config["versions"], manifest["versions"]):
        assert versions["torch"] == torch.__version__ and versions["ppsvd"] == ppsvd.__version__
        assert versions["diffusers"] and versions["transformers"] and versions["host"]
    assert [s["image"] for s in manifest["samples"]] == [str(inputs_dir / f"{n}.png") for n in "abc"]


@pytest.mark.slow
def test_progress_lines_reach_a_pipe_while_the_run_goes(cli_run):
    _, progress_while_running, stderr, stdout = cli_run
    assert progress_while_running, stderr[-3000:]
    assert re.search(
        r"stage 0: loading unet, scheduler, image_encoder, feature_extractor, vae from .* \(\d+ s\)", stderr
    ), stderr[-3000:]
    assert "ETA" in stderr and "efficiency" in stdout.lower()


@pytest.fixture(scope="module")
def http_images(inputs_dir):
    """inputs_dir served on 127.0.0.1 (a free port) for the test's lifetime."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(inputs_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_api_gives_the_cli_latents_with_an_image_by_url(cli_run, http_images, inputs_dir, tiny_repo, tmp_path):
    run_dir, _, _, _ = cli_run
    images = [f"{http_images}/a.png?raw=1", inputs_dir / "b.png", str(inputs_dir / "c.png")]
    result = ppsvd.run(
        images,
        model_id=str(tiny_repo),
        device="cpu",
        nproc=1,
        num_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        output_dir=tmp_path,
        progress=False,
    )
    assert isinstance(result, ppsvd.RunResult) and [s.name for s in result.samples] == NAMES
    assert result.samples[0].image == images[0]
    cli = read_latents(run_dir)
    for sample in result.samples:
        assert torch.equal(sample.latents(), cli[sample.index]), f"sample {sample.index}: the API and the CLI differ"
    assert result.samples[1].frames().shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert result.metrics.completed == 3 and result.wall_s > 0


RESUME_SCRIPT = """
import json
import shutil
import sys
from pathlib import Path

import torch

import ppsvd


def main(out: Path) -> None:
    options = dict(model_id="tiny", device="cpu", num_samples=3, total_steps=2, progress=False)
    full = ppsvd.run(nproc=1, output_dir=out / "runs", **options)

    # A stopped run: a journal instead of the final manifest, and the last sample's latents
    # damaged (truncated) after it was listed.
    cut = out / "cut"
    shutil.copytree(full.run_dir, cut)
    (cut / "manifest.json").unlink()
    entries = full.manifest["samples"]
    (cut / "manifest.jsonl").write_text("".join(json.dumps(e) + "\\n" for e in entries))
    latents = cut / entries[-1]["latents"]
    latents.write_bytes(latents.read_bytes()[:100])

    try:
        ppsvd.run(resume=cut, seed=9)
    except ppsvd.ConfigError as exc:
        print("refused:", exc)
    resumed = ppsvd.run(resume=cut, nproc=2, progress=False)
    again = ppsvd.run(resume=cut)
    pairs = zip(full.samples, resumed.samples, strict=True)
    report = {
        "run_dir": str(resumed.run_dir),
        "names": [s.name for s in resumed.samples],
        "same_latents": all(torch.equal(a.latents(), b.latents()) for a, b in pairs),
        "same_video": resumed.samples[-1].video.read_bytes() == full.samples[-1].video.read_bytes(),
        "again": len(again.samples),
    }
    print(json.dumps(report))


main(Path(sys.argv[1]))  # no __main__ guard needed: the workers never import this script
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_api_resume_continues_a_stopped_run_as_a_script(tmp_path):
    """ppsvd.run(resume=RUN_DIR) in a script of its own: it refuses an option that changes the
    samples, regenerates only the damaged sample (on another number of stages) bitwise as the
    uninterrupted run made it, and a finished run is left as it is."""
    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=220, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    refused = next(line for line in lines if line.startswith("refused:"))
    assert refused.startswith("refused: resume ") and "seed 9 (the run used 0)" in refused, refused
    result = json.loads(lines[-1])
    assert result["run_dir"] == str(tmp_path / "cut")
    assert result["names"] == ["builtin-s0", "builtin-s1", "builtin-s2"]
    assert result["same_latents"] and result["same_video"] and result["again"] == 3, result
    assert "resuming" in done.stderr and "2 of 3 samples kept, 1 to generate" in done.stderr, done.stderr[-3000:]
    assert "nothing to do: all 3 samples" in " ".join(done.stdout.split())


# -- per-sample conditioning ------------------------------------------------------------------------


def test_per_sample_conditioning_travels_with_the_sample_and_stays_exact(tiny_repo, inputs_dir, pipe):
    """Each --inputs entry's seed, motion bucket, fps and noise augmentation, through 2 stages."""
    from ppsvd.models.svd import SVDStageModel
    from ppsvd.planning.steps import partition_steps

    entries = (
        SampleInput(image=str(inputs_dir / "b.png"), seed=11, motion_bucket_id=30, fps=9, noise_aug_strength=0.1),
        SampleInput(image=str(inputs_dir / "a.png")),
    )
    config = RunConfig.from_options(
        model=str(tiny_repo),
        inputs=entries,
        num_samples=2,
        seed=4,
        total_steps=STEPS,
        latent_shape=(1, 4, FRAMES, HEIGHT // 8, WIDTH // 8),
    ).validate()
    plan = partition_steps(STEPS, 2)
    first, last = (SVDStageModel(config, plan, k, torch.device("cpu")) for k in range(2))
    for index, (entry, kwargs) in enumerate(
        [(entries[0], dict(motion_bucket_id=30, fps=9, noise_aug_strength=0.1)), (entries[1], {})]
    ):
        sample = first.run_steps(first.prepare(index), plan.ranges[0])
        result = last.finalize(last.run_steps(sample, plan.ranges[1]))
        seed = 11 if index == 0 else 4 + index
        assert result.meta["seed"] == seed and result.meta["name"] == f"{Path(entry.image).stem}-s{seed}"
        want = diffusers_latents(pipe, Image.open(entry.image).convert("RGB"), seed=seed, **kwargs)
        assert torch.equal(result.latents, want), f"entry {index}"
    assert result.meta["fps"] == 6  # the run's: the writer gives the MP4 this frame rate


def test_job_files_csv_and_json_lines(tmp_path):
    (tmp_path / "imgs").mkdir()
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text(
        "image,seed,motion_bucket_id,fps,noise_aug_strength\nimgs/cat.png,3,,8,\nhttps://x.org/dog.jpg,,200,,0.1\n"
    )
    assert read_inputs(csv_file) == (
        SampleInput(image=str(tmp_path / "imgs" / "cat.png"), seed=3, fps=8),
        SampleInput(image="https://x.org/dog.jpg", motion_bucket_id=200, noise_aug_strength=0.1),
    )
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"image": "/abs/cat.png", "seed": 3}\n\n"dog.png"\n')
    assert read_inputs(jsonl) == (
        SampleInput(image="/abs/cat.png", seed=3),
        SampleInput(image=str(tmp_path / "dog.png")),
    )
    for text, needle in [
        ('{"image": "a.png", "sede": 1}\n', "unknown field 'sede'"),
        ('{"seed": 1}\n', "no image"),
        ('{"image": "a.png", "seed": "x"}\n', "seed 'x' is not an integer"),
        ("", "no entries"),
        ("{oops\n", "line 1: not JSON"),
    ]:
        jsonl.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            read_inputs(jsonl)
    with pytest.raises(ConfigError, match="no 'image' column"):
        csv_file.write_text("picture,seed\na.png,1\n")
        read_inputs(csv_file)


def test_outputs_are_named_after_inputs_and_unique():
    config = RunConfig.from_options(
        model="tiny", images=("x/cat.png", "y/cat.jpg", "https://h/p/dog.webp?s=1"), num_samples=4
    )
    assert [s.name for s in plan_samples(config)] == ["cat-s0", "cat-s1", "dog-s2", "cat-s3"]
    same_seed = RunConfig.from_options(
        model="tiny",
        inputs=(SampleInput(image="x/cat.png", seed=1), SampleInput(image="y/cat.png", seed=1)),
        num_samples=3,
    )
    assert [s.name for s in plan_samples(same_seed)] == ["cat-s1", "cat-s1-2", "cat-s1-3"]
    assert [s.name for s in plan_samples(RunConfig.from_options(model="tiny", num_samples=2, seed=5))] == [
        "builtin-s5",
        "builtin-s6",
    ]


# -- bad input: one line, exit code 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--num-inference-steps", "25", "--total-steps", "28"], ["--num-inference-steps 25", "--total-steps 28"]),
        (
            ["--latent-shape", "1", "4", "4", "8", "8", "--width", "96"],
            ["--width 96", "--latent-shape 1 4 4 8 8", "--width 64"],
        ),
        (["--num-frames", "5", "--latent-shape", "1", "4", "4", "8", "8"], ["--num-frames 5", "F=4"]),
        (["--height", "100"], ["--height 100", "divisible by 8", "--height 96 or 104"]),
        (["--image", "a.png", "--inputs", "jobs.csv"], ["--image", "--inputs"]),
        (["--transport", "pigeon"], ["'pigeon' is not one of", "nccl"]),
        (["--save-frames", "true"], ["true"]),
    ],
)
def test_conflicting_or_bad_options_exit_2_with_one_line(capsys, monkeypatch, tmp_path, argv, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "jobs.csv").write_text("image\na.png\n")
    monkeypatch.setattr("ppsvd.runtime.launch.launch", lambda *a, **k: pytest.fail("launched workers on bad input"))
    code, _, err = run_cli(capsys, "run", "--model-id", "tiny", "--device", "cpu", *argv)
    assert code == 2, err
    assert all(n in err for n in needles), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fewer_samples_than_images_says_which_are_skipped(capsys, monkeypatch, inputs_dir, tmp_path):
    def stop(*args, **kwargs):
        raise ConfigError("stopped before launching")

    monkeypatch.setattr("ppsvd.runtime.launch.launch", stop)
    code, _, err = run_cli(
        capsys,
        "run",
        "--model-id",
        "tiny",
        "--device",
        "cpu",
        "--image",
        str(inputs_dir),
        "--num-samples",
        "2",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 2 and "uses the first 2 of 3 input images; skipped: " + str(inputs_dir / "c.png") in " ".join(
        err.split()
    )


def test_a_bad_url_is_one_line(http_images):
    with pytest.raises(InputImageError) as info:
        check_image(f"{http_images}/missing.png")
    assert "missing.png" in str(info.value) and "\n" not in str(info.value)
    assert load_image(f"{http_images}/b.png", 16, 8).size == (16, 8)


# -- help, completion, the package ---------------------------------------------------------------


def test_help_lists_choices_flags_and_true_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0
    for text in (
        "<nccl|gloo|zmq>",
        "<auto|rich|plain|json>",
        "--save-frames",
        "--no-save-frames",
        "--num-inference-steps",
        "num_frames=14, height=512, width=512, num_inference_steps=28",
    ):
        assert text in " ".join(out.split()), text
    _, out, _ = run_cli(capsys, "simulate", "--help")
    assert "Default 4" in out and "cuda when" not in out
    _, out, _ = run_cli(capsys, "--help")
    assert "--install-completion" in out


def test_importing_ppsvd_and_its_api_does_not_import_torch():
    code = (
        "import sys, ppsvd, ppsvd.api; ppsvd.run; ppsvd.RunResult; print('torch' in sys.modules, 'diffusers' in "
        "sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False False", proc.stderr


def test_json_progress_lines():
    from ppsvd.runtime.control import key
    from ppsvd.runtime.progress import ProgressBoard, eta_seconds

    class Store(dict):
        def check(self, names):
            return all(n in self for n in names)

        def get(self, name):
            return dict.get(self, name).encode()

    store = Store(
        {key("r", "progress", 0): "1 4", key("r", "phase", 0): "running", key("r", "phase", 1): "loading unet"}
    )
    board = ProgressBoard(store, "r", [("stage 0", 4, 2), ("stage 1", 4, 2)], title="t", style="json", interval_s=1)
    board.refresh()
    board.first_step_at -= 2.0  # 4 steps in 2 s: 12 left at 2 steps/s
    record = board_record(board)
    assert record["event"] == "progress" and 5.9 < record["eta_s"] < 6.2
    assert record["stages"][1]["phase"] == "loading unet" and record["stages"][0]["steps"] == 4
    assert eta_seconds(0, 10, 5.0) is None


def test_bars_take_the_agreed_split():
    """--partition auto may move steps after the bars started from the even split: each stage
    publishes its range once agreed, and its total follows (no '45/42 steps')."""
    from ppsvd.runtime.control import key
    from ppsvd.runtime.progress import ProgressBoard

    class Store(dict):
        def check(self, names):
            return all(n in self for n in names)

        def get(self, name):
            return dict.get(self, name).encode()

    store = Store({key("r", "progress", 0): "3 45", key("r", "planned-steps", 0): "0 15"})
    board = ProgressBoard(
        store,
        "r",
        [("stage 0 · steps 0-13", 14, 3), ("stage 1 · steps 14-27", 14, 3)],
        title="t",
        style="json",
        interval_s=1,
    )
    board.refresh()
    first, second = board_record(board)["stages"]
    assert (first["label"], first["steps"], first["total_steps"]) == ("stage 0 · steps 0-14", 45, 45)
    assert (second["label"], second["total_steps"]) == ("stage 1 · steps 14-27", 42)  # not published yet: unchanged


def board_record(board) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        board.report()
    return json.loads(buffer.getvalue())


# -- hub conventions -----------------------------------------------------------------------------


def test_variant_fp16_for_fp16_runs_and_an_explicit_variant_must_exist(tiny_repo, tmp_path):
    import shutil

    from ppsvd.models.base import preflight
    from ppsvd.models.svd import weights_variant

    repo = tmp_path / "both"
    shutil.copytree(tiny_repo, repo)
    unet = repo / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copy(unet, unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert (
        weights_variant(RunConfig.from_options(model=str(repo), device="cuda"), "local", "unet") == "fp16"
    )  # fp16 run
    assert weights_variant(RunConfig.from_options(model=str(repo)), "local", "unet") is None  # fp32 run: the full files
    assert (
        weights_variant(RunConfig.from_options(model=str(repo), device="cuda"), "local", "vae") is None
    )  # no fp16 there
    with pytest.raises(ModelNotFoundError, match=r"--variant fp16: .* no fp16 weights for vae, image_encoder"):
        preflight(RunConfig.from_options(model=str(repo), variant="fp16", latent_shape=(1, 4, 2, 8, 8)))


def test_missing_model_at_a_revision_says_how_to_fetch_it(tmp_path, monkeypatch):
    from ppsvd.models.base import preflight

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        preflight(RunConfig.from_options(model="someone/svd-like", revision="v2", latent_shape=(1, 4, 2, 8, 8)))
    assert "at revision v2" in str(info.value) and "hf download someone/svd-like --revision v2" in str(info.value)
