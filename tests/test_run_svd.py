"""`ppsvd run` with real SVD components in real processes: exact against diffusers' pipeline.

The tiny SVD is saved with save_pretrained and loaded by every worker through from_pretrained,
the path a hub model takes. Latents are compared bitwise; decoded frames (saved as PNG, which
is lossless) equal the pipeline's uint8 frames; MP4s read back with the right size and count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppsvd.config import RunConfig
from ppsvd.io.images import builtin_image, load_image
from ppsvd.io.video import read_mp4
from ppsvd.models import tiny
from ppsvd.models.svd import frames_to_uint8
from ppsvd.runtime.launch import launch
from tests.helpers import read_latents

SHAPE = (1, 4, 3, 8, 8)  # B C F H W -> 64x64 pixels, 3 frames
STEPS = 4
SAMPLES = 3


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-svd"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for k, size in enumerate([(80, 48), (64, 64)]):
        path = folder / f"in{k}.png"
        img = builtin_image(*size)
        if k:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def reference(tiny_repo, images):
    """What diffusers' StableVideoDiffusionPipeline returns for each sample (latents, uint8 frames)."""
    from diffusers import StableVideoDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_repo)
    pipe.set_progress_bar_config(disable=True)
    config = base_config(tiny_repo, images, Path("."))
    b, _, f, h, w = SHAPE
    results = {}
    for index in range(SAMPLES):
        image = load_image(images[index % len(images)], w * 8, h * 8)
        kwargs = dict(
            height=h * 8,
            width=w * 8,
            num_frames=f,
            num_inference_steps=STEPS,
            fps=config.svd.fps,
            motion_bucket_id=config.svd.motion_bucket_id,
            noise_aug_strength=config.svd.noise_aug_strength,
            min_guidance_scale=config.svd.min_guidance_scale,
            max_guidance_scale=config.svd.max_guidance_scale,
            num_videos_per_prompt=b,
        )
        latents = pipe(
            image, generator=torch.Generator("cpu").manual_seed(config.job.seed + index), output_type="latent", **kwargs
        ).frames
        frames = pipe(
            image, generator=torch.Generator("cpu").manual_seed(config.job.seed + index), output_type="np", **kwargs
        ).frames
        results[index] = (latents, frames_to_uint8(frames))
    return results


def base_config(tiny_repo, images, out: Path, **changes) -> RunConfig:
    values = dict(
        model=str(tiny_repo),
        total_steps=STEPS,
        latent_shape=SHAPE,
        num_samples=SAMPLES,
        seed=5,
        images=tuple(images),
        output_dir=out,
        show_progress=False,
        timeout_s=120.0,
        save_frames=True,
    )
    values.update(changes)
    return RunConfig.from_options(**values).validate()


def read_frames(run_dir: Path, index: int) -> np.ndarray:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (entry,) = [s for s in manifest["samples"] if s["index"] == index]
    folder = run_dir / entry["frames"][0]
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "nproc,transport",
    # One case here (the fast lane keeps it): `ppsvd verify`'s test (tests/test_verify.py) compares
    # 1 process and 3 stages over gloo and over zmq with diffusers' pipeline, through the same
    # launcher; tests/test_pipeline.py checks 4 stages over each transport against one stage.
    [(2, "gloo")],
)
def test_videos_equal_diffusers_pipeline(tiny_repo, images, reference, tmp_path, nproc, transport):
    config = base_config(tiny_repo, images, tmp_path, nproc=nproc, transport=transport)
    result = launch(config)
    assert result.ok, result.error
    latents = read_latents(result.run_dir)
    assert sorted(latents) == list(range(SAMPLES))
    for index, (ref_latents, ref_frames) in reference.items():
        assert torch.equal(latents[index], ref_latents), f"sample {index}: N={nproc} {transport}"
        assert np.array_equal(read_frames(result.run_dir, index), ref_frames[0])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [s["image"] for s in manifest["samples"]] == [images[i % 2] for i in range(SAMPLES)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_uneven_partition_equals_diffusers_pipeline(tiny_repo, images, reference, tmp_path):
    # 3 stages over 4 steps: 1 + 2 + 1, the middle stage runs two (run() calibrates for auto;
    # this checks an explicit uneven split, which the default auto may or may not choose)
    config = base_config(tiny_repo, images, tmp_path, nproc=3, transport="zmq", partition="1,2,1")
    result = launch(config)
    assert result.ok, result.error
    latents = read_latents(result.run_dir)
    for index, (ref_latents, ref_frames) in reference.items():
        assert torch.equal(latents[index], ref_latents), f"sample {index}: partition 1,2,1"
        assert np.array_equal(read_frames(result.run_dir, index), ref_frames[0])
    assert json.loads((result.run_dir / "manifest.json").read_text())["partition"] == [[0, 1], [1, 3], [3, 4]]


@pytest.mark.timeout(240)
def test_cli_run_writes_mp4s_and_manifest(tiny_repo, images, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ppsvd",
        "run",
        "--model-id",
        str(tiny_repo),
        "--nproc",
        "2",
        "--num-samples",
        "3",
        "--image",
        images[0],
        "--total-steps",
        str(STEPS),
        "--latent-shape",
        *map(str, SHAPE),
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=230, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"in0-s{i}.mp4" for i in range(3)]  # named after the image and seed
    for video in videos:
        assert read_mp4(video) == (SHAPE[2], SHAPE[3] * 8, SHAPE[4] * 8)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # --partition auto (the default) measured the stages and chose a contiguous split of the 4 steps
    ranges = manifest["partition"]
    assert len(manifest["samples"]) == 3 and len(ranges) == 2
    assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == STEPS
    assert not list(run_dir.rglob(".tmp-*")), "a temporary file was left behind"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_runs_under_torchrun(tiny_repo, images, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ppsvd",
        "run",
        "--model-id",
        str(tiny_repo),
        "--num-samples",
        "3",
        "--seed",
        "5",
        "--image",
        images[0],
        "--image",
        images[1],
        "--total-steps",
        str(STEPS),
        "--latent-shape",
        *map(str, SHAPE),
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=230, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    latents = read_latents(run_dir)
    assert all(torch.equal(latents[i], reference[i][0]) for i in range(SAMPLES))


def test_bad_image_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppsvd",
            "run",
            "--model-id",
            "tiny",
            "--image",
            str(bad),
            "--device",
            "cpu",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_model_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppsvd",
            "run",
            "--model-id",
            "someone/not-cached",
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "someone/not-cached" in line and str(tmp_path / "hf") in line and len(line.splitlines()) == 1
