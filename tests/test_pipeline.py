"""The pipeline end to end, in real processes: exact for any N and transport, in order, complete."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ppsvd.analysis.timeline import RunTimeline
from ppsvd.runtime.launch import launch
from tests.helpers import read_latents, reference_latents, small_config

SLOW = pytest.mark.slow  # the fast lane (-m "not slow") keeps one case per transport
CASES = [
    pytest.param(1, "gloo", marks=SLOW),
    (2, "gloo"),
    pytest.param(3, "gloo", marks=SLOW),
    pytest.param(4, "gloo", marks=SLOW),
    (2, "zmq"),
    pytest.param(3, "zmq", marks=SLOW),
    pytest.param(4, "zmq", marks=SLOW),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nproc,transport", CASES)
def test_every_sample_is_bitwise_equal_to_one_stage(tmp_path, no_fault, nproc, transport):
    config = small_config(tmp_path, nproc=nproc, transport=transport)
    result = launch(config)
    assert result.ok, result.error

    got = read_latents(result.run_dir)
    want = reference_latents(config)
    assert sorted(got) == list(range(config.job.num_samples))
    for index, latents in want.items():
        assert torch.equal(got[index], latents), f"sample {index} differs with N={nproc} over {transport}"

    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [s["index"] for s in manifest["samples"]] == list(range(config.job.num_samples))
    assert manifest["partition"] == [
        [r.start, r.stop] for r in __import__("ppsvd.planning.steps").planning.steps.partition_steps(28, nproc).ranges
    ]

    timeline = RunTimeline.load(result.run_dir / "timeline.json")
    assert timeline.num_stages == nproc
    for stage in timeline.stages:
        # every stage saw every sample exactly once, in order
        assert [s.index for s in stage.samples] == list(range(config.job.num_samples))
    last = timeline.stages[-1]
    assert [s.compute_end for s in last.samples] == sorted(s.compute_end for s in last.samples)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "transport,changes,sizes",
    [
        ("gloo", {"partition": "1,2,25"}, (1, 2, 25)),  # explicit, as lopsided as it gets
        # auto with a decode worth 4 steps: the last stage gets fewer (11 ms, 10 ms, 7 + 4 ms)
        ("zmq", {"partition": "auto", "step_ms": 1.0, "decode_ms": 4.0}, (11, 10, 7)),
    ],
)
def test_uneven_partitions_are_bitwise_equal_to_one_stage(tmp_path, no_fault, transport, changes, sizes):
    config = small_config(tmp_path, nproc=3, transport=transport, **changes)
    result = launch(config)
    assert result.ok, result.error
    got, want = read_latents(result.run_dir), reference_latents(config)
    assert sorted(got) == list(range(config.job.num_samples))
    assert all(torch.equal(got[i], want[i]) for i in want), f"partition {sizes} changed a sample"
    timeline = RunTimeline.load(result.run_dir / "timeline.json")
    assert tuple(s.steps[1] - s.steps[0] for s in timeline.stages) == sizes
    assert timeline.partition == changes["partition"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert sum(b - a for a, b in manifest["partition"]) == 28


@pytest.mark.timeout(120)
def test_data_parallel_baseline_gives_the_same_samples(tmp_path, no_fault):
    config = small_config(tmp_path, nproc=2, strategy="data", num_samples=5)
    result = launch(config)
    assert result.ok, result.error
    got, want = read_latents(result.run_dir), reference_latents(config)
    assert sorted(got) == list(range(5))
    assert all(torch.equal(got[i], want[i]) for i in want)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [s["index"] for s in manifest["samples"]] == list(range(5))


@pytest.mark.timeout(150)
def test_runs_as_a_worker_under_torchrun(tmp_path, no_fault):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ppsvd",
        "simulate",
        "--total-steps",
        "28",
        "--latent-shape",
        "1",
        "4",
        "2",
        "8",
        "8",
        "--num-samples",
        "5",
        "--seed",
        "7",
        "--step-ms",
        "0",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=140, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    got = read_latents(run_dir)
    want = reference_latents(small_config(tmp_path))
    assert sorted(got) == list(range(5))
    assert all(torch.equal(got[i], want[i]) for i in want)
    assert "efficiency" in proc.stdout.lower()
