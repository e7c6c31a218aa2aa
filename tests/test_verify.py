"""`ppsvd verify` on the tiny SVD on CPU: every layout against diffusers' own pipeline, and a planted
fault that it must catch. The end-to-end runs are the command as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.models.faults import FAULT_ENV, VERIFY_RUN, fault_for
from ppsvd.verify.bounds import COMPILE_BOUND, GUIDANCE_SPLIT_BOUND, layout_bound
from ppsvd.verify.check import one_line, relative_difference
from ppsvd.verify.layouts import VerifyLayout, default_layouts, parse_layouts

# -- the layouts and their promises ---------------------------------------------------------------


def test_layout_specs_parse_and_bad_ones_are_one_line():
    layouts = parse_layouts("pipeline:1, pipeline:3:zmq,data:2,cfg:2:gloo,pipeline:1:compile")
    assert [lay.spec for lay in layouts] == [
        "pipeline:1",
        "pipeline:3:zmq",
        "data:2",
        "cfg:2:gloo",
        "pipeline:1:compile",
    ]
    assert layouts[1] == VerifyLayout("pipeline", 3, "zmq") and layouts[4].compile
    for bad, needle in [
        ("ring:2", "strategy must be one of"),
        ("pipeline:x", "N='x'"),
        ("pipeline:2:udp", "'udp' is neither a transport"),
        ("cfg:3", "even N"),
        ("", "lists no layout"),
    ]:
        with pytest.raises(ConfigError, match=needle) as info:
            parse_layouts(bad)
        assert "\n" not in str(info.value)


def test_default_layouts_per_machine():
    specs = lambda layouts: [lay.spec for lay in layouts]  # noqa: E731
    assert specs(default_layouts("cpu", 0, guidance=True)) == [
        "pipeline:1",
        "pipeline:3:gloo",
        "pipeline:3:zmq",
        "data:2",
        "cfg:2",
    ]
    assert specs(default_layouts("cuda", 1, guidance=False)) == ["pipeline:1", "pipeline:3:zmq", "data:2"]
    assert specs(default_layouts("cuda", 4, guidance=True)) == ["pipeline:1", "pipeline:4", "data:4", "cfg:2"]
    assert all(lay.compile for lay in default_layouts("cpu", 0, guidance=True, compile=True))


def test_layout_configs_share_gpus_only_where_needed(tmp_path):
    base = RunConfig.from_options(model="tiny", device="cuda", latent_shape=(1, 4, 3, 8, 8))
    three = VerifyLayout("pipeline", 3, "zmq").config(base, 1, tmp_path)
    assert three.layout.stages_per_gpu == 3 and three.resolved_transport == "zmq"
    assert three.extra[VERIFY_RUN] == {"layout": "pipeline:3:zmq"} and three.output.save_frames
    assert VerifyLayout("pipeline", 3).config(base, 1, tmp_path).resolved_transport == "gloo"  # nccl cannot share
    assert VerifyLayout("pipeline", 2).config(base, 2, tmp_path).layout.stages_per_gpu == 1
    with pytest.raises(ConfigError, match="NCCL refuses"):
        VerifyLayout("pipeline", 3, "nccl").config(base, 1, tmp_path).validate()


def test_bounds_are_one_definition():
    assert layout_bound("fp32", guidance_split=False, compiled=False) is None  # bitwise
    assert layout_bound("fp32", guidance_split=True, compiled=False) == GUIDANCE_SPLIT_BOUND["fp32"] == 1e-5
    assert (
        layout_bound("fp16", guidance_split=True, compiled=True) == GUIDANCE_SPLIT_BOUND["fp16"] + COMPILE_BOUND["fp16"]
    )
    assert VerifyLayout("cfg", 2).bound("fp32") == 1e-5 and VerifyLayout("data", 2).bound("fp16") is None
    a = torch.tensor([1.0, -4.0, 2.0])
    assert relative_difference(a, a) == 0.0
    assert relative_difference(torch.tensor([1.0, -4.0, 2.5]), a) == pytest.approx(0.5 / 4)
    assert one_line("BackendCompilerFailed:\n  ImportError: x\n") == "BackendCompilerFailed: ImportError: x"
    assert len(one_line("x " * 500)) == 400


# -- the planted fault: never in normal use ---------------------------------------------------------


def test_perturb_fault_applies_only_to_verify_runs(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:2:perturb")
    normal = RunConfig.from_options(model="tiny")
    verifying = normal.replace(extra={VERIFY_RUN: {"layout": "pipeline:3:zmq"}})
    assert fault_for(normal, 1) is None  # ppsvd run / simulate / bench: ignored
    assert fault_for(verifying, 0) is None  # another stage's
    fault = fault_for(verifying, 1)
    latents = torch.ones(1, 2, 4, 3, 3)
    assert fault.perturb(latents, 1, 1) is latents  # another sample
    nudged = fault.perturb(latents, 1, 2)
    assert (nudged != latents).sum() == 1 and relative_difference(nudged, latents) == pytest.approx(1e-2)
    monkeypatch.setenv(FAULT_ENV, "1:2")
    with pytest.raises(ValueError, match="STAGE:SAMPLE:KIND"):
        fault_for(verifying, 1)


def test_svd_stage_ignores_a_perturb_fault_outside_verify(monkeypatch):
    from ppsvd.models.svd import SVDStageModel
    from ppsvd.planning.steps import partition_steps

    monkeypatch.setenv(FAULT_ENV, "0:0:perturb")
    config = RunConfig.from_options(model="tiny", total_steps=2, latent_shape=(1, 4, 2, 8, 8)).validate()
    stage = SVDStageModel(config, partition_steps(2, 1), 0, torch.device("cpu"))
    assert stage.fault is None
    marked = SVDStageModel(config.replace(extra={VERIFY_RUN: {}}), partition_steps(2, 1), 0, torch.device("cpu"))
    assert marked.fault is not None


# -- the reference: one call gives diffusers' latents and frames --------------------------------------


def test_reference_latents_are_what_output_type_latent_returns():
    """The callback's final latents are the very tensor output_type='latent' returns (bitwise)."""
    from ppsvd.io.images import builtin_image
    from ppsvd.verify.reference import build_pipeline, run_sample

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = RunConfig.from_options(model="tiny", total_steps=2, latent_shape=(1, 4, 2, 8, 8), seed=4).validate()
        pipe = build_pipeline(config)
        sample = run_sample(pipe, config, 1)
        latents = pipe(
            builtin_image(64, 64),
            height=64,
            width=64,
            num_frames=2,
            num_inference_steps=2,
            fps=config.svd.fps,
            motion_bucket_id=config.svd.motion_bucket_id,
            noise_aug_strength=config.svd.noise_aug_strength,
            generator=torch.Generator("cpu").manual_seed(5),
            output_type="latent",
        ).frames
    finally:
        torch.set_num_threads(before)
    assert torch.equal(sample.latents, latents)
    assert sample.frames.shape == (1, 2, 64, 64, 3) and sample.frames.dtype.name == "uint8"


# -- the command, as a user runs it ---------------------------------------------------------------------


SHORT = ("--num-samples", "2", "--num-inference-steps", "3")


def run_verify(tmp_path, *args, fault: str | None = None, timeout: float = 600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "ppsvd", "verify", "--model-id", "tiny", "--device", "cpu", "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_verify_passes_every_default_layout(tmp_path):
    # The default layouts; 2 samples of 3 steps keep it short (3 stages get a step each, nothing to calibrate).
    proc, report = run_verify(tmp_path, *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by = {r["layout"]: r for r in report["layouts"]}
    assert list(by) == ["pipeline:1", "pipeline:3:gloo", "pipeline:3:zmq", "data:2:gloo", "cfg:2:gloo"]
    for name in ("pipeline:1", "pipeline:3:gloo", "pipeline:3:zmq", "data:2:gloo"):
        assert by[name]["ok"] and by[name]["latents_bitwise"] and by[name]["max_frame_difference"] == 0, by[name]
    pair = by["cfg:2:gloo"]
    assert pair["ok"] and pair["bound"] == GUIDANCE_SPLIT_BOUND["fp32"] and pair["frames_equal"]
    assert 0 < pair["max_relative_difference"] <= pair["bound"]
    assert all(r["vs_diffusers"] > 0 for r in report["layouts"])
    assert report["reference"]["cpu_threads"] == 1 and len(report["reference"]["seconds_per_sample"]) == 2
    assert not list(tmp_path.iterdir())  # the scratch runs are gone


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_verify_fails_naming_the_layout_a_planted_fault_broke(tmp_path):
    """Stage 1 nudges sample 1's latent: the 3-stage pipeline fails, exit 1 names it; the 1-process
    layout (no stage 1) still passes."""
    proc, report = run_verify(tmp_path, *SHORT, "--layouts", "pipeline:1,pipeline:3:zmq", fault="1:1:perturb")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert report["failed"] == ["pipeline:3:zmq"]
    broken = report["layouts"][1]
    assert not broken["ok"] and not broken["latents_bitwise"] and broken["max_relative_difference"] > 1e-4
    assert report["layouts"][0]["ok"]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ppsvd: error: verify failed: pipeline:3:zmq: latents differ")
    assert "bitwise equality claimed" in last


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_unet_stays_within_its_bound(tmp_path):
    """--compile (torch.compile with inductor; gcc compiles its kernels here): within COMPILE_BOUND,
    the compile time reported apart, frames equal to diffusers' decode of the compiled latents."""
    proc, report = run_verify(tmp_path, "--layouts", "pipeline:1", "--compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (compiled,) = report["layouts"]
    assert compiled["layout"] == "pipeline:1:compile" and compiled["compiled"]
    assert compiled["bound"] == COMPILE_BOUND["fp32"] and compiled["frames_equal"]
    assert compiled["max_relative_difference"] <= COMPILE_BOUND["fp32"]
    assert compiled["compile_s"] > 0
    diff, took = compiled["max_relative_difference"], compiled["compile_s"]
    print(f"compiled: max relative difference {diff:.2e}, compile {took:.1f} s")
