"""Interrupts (exit 128 + signal, one line, nothing left behind), --resume (bitwise equal to an
uninterrupted run), the run directory's checks, file modes, and bad output directories."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppsvd.config import RunConfig
from tests.helpers import read_latents, reference_latents, run_cli

DUMPS = ("Traceback", "Fatal Python error", "terminate called")
SIM = ["simulate", "--total-steps", "4", "--latent-shape", "1", "4", "1", "8", "8", "--seed", "3", "--no-progress"]


def _start(argv: list[str], tmp_path: Path, *, torchrun: bool = False) -> subprocess.Popen:
    """A run in its own process group (as a terminal starts it), with a private temp dir so the
    sockets it leaves (or not) can be seen."""
    sockets = tmp_path / "tmp"
    sockets.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(sockets), "OMP_NUM_THREADS": "1"}
    head = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ppsvd"]
        if torchrun
        else [sys.executable, "-m", "ppsvd"]
    )
    return subprocess.Popen(
        head + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def _wait_for_samples(out: Path, count: int, proc: subprocess.Popen, limit_s: float = 60) -> Path:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for journal in out.glob("*/manifest.jsonl"):
            if len(journal.read_text().splitlines()) >= count:
                return journal.parent
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {count} finished samples within {limit_s} s: {proc.communicate()[0][-3000:]}")


def _interrupt(proc: subprocess.Popen, sig: int) -> tuple[int, str, float]:
    sent = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop within 30 s of the signal")
    return proc.returncode, output, time.monotonic() - sent


def _left_behind(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ppsvd")]


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "sig,code,transport", [(signal.SIGINT, 130, "zmq"), (signal.SIGTERM, 143, "gloo"), (signal.SIGHUP, 129, "zmq")]
)
def test_signal_stops_quietly_then_resume_equals_uninterrupted(tmp_path, no_fault, sig, code, transport):
    out = tmp_path / "runs"
    proc = _start(
        [
            *SIM,
            "--nproc",
            "2",
            "--num-samples",
            "400",
            "--step-ms",
            "5",
            "--transport",
            transport,
            "--output-dir",
            str(out),
        ],
        tmp_path,
    )
    run_dir = _wait_for_samples(out, 5, proc)
    rc, output, took = _interrupt(proc, sig)
    assert rc == code, output[-3000:]
    assert took < 5.0, took
    for dump in DUMPS:
        assert dump not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("ppsvd:")]
    assert len(lines) == 1 and f"interrupted by {signal.Signals(sig).name}" in lines[0], output[-3000:]
    kept = int(re.search(r"(\d+) of 400 samples finished and kept", lines[0]).group(1))
    assert kept >= 5 and f"resume with: ppsvd simulate --resume {run_dir}" in lines[0]
    assert _left_behind(tmp_path) == [] and not list(run_dir.rglob(".tmp-*"))
    if sig != signal.SIGINT:
        return
    # Resume with another N and transport: the same samples, bit for bit, each listed once.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppsvd",
            "simulate",
            "--resume",
            str(run_dir),
            "--nproc",
            "3",
            "--transport",
            "gloo",
            "--step-ms",
            "0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{kept} of 400 samples kept" in done.stderr
    saved = {k: v for k, v in json.loads((run_dir / "config.json").read_text()).items() if k != "partition"}
    config = RunConfig.from_json(saved).replace(step_ms=0.0)
    expected, got = reference_latents(config), read_latents(run_dir)
    assert sorted(got) == list(range(400))
    assert all(torch.equal(got[i], expected[i]) for i in range(400))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [e["index"] for e in manifest["samples"]] == list(range(400))
    assert not (run_dir / "manifest.jsonl").exists()
    again = subprocess.run(
        [sys.executable, "-m", "ppsvd", "simulate", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_under_torchrun_workers_leave_quietly(tmp_path, no_fault):
    out = tmp_path / "runs"
    proc = _start(
        [*SIM, "--num-samples", "400", "--step-ms", "5", "--transport", "zmq", "--output-dir", str(out)],
        tmp_path,
        torchrun=True,
    )
    run_dir = _wait_for_samples(out, 5, proc)
    rc, output, took = _interrupt(proc, signal.SIGTERM)
    assert took < 5.0, took
    # torchrun speaks for itself (its SignalException traceback and exit code 1: torch's launcher,
    # not ppsvd); every ppsvd worker left quietly, the last stage with the one line it alone can give.
    assert rc != 0
    assert "Fatal Python error" not in output and "terminate called" not in output, output[-3000:]
    assert output.count("Traceback") <= 1 and ("Traceback" not in output or "SignalException" in output), output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("ppsvd:")]
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0], output[-3000:]
    assert f"torchrun --standalone --nproc_per_node=2 -m ppsvd simulate --resume {run_dir}" in lines[0]
    assert _left_behind(tmp_path) == [] and not list(run_dir.rglob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_dir_deleted_mid_run_exits_1_naming_it(tmp_path, no_fault):
    out = tmp_path / "runs"
    proc = _start([*SIM, "--nproc", "2", "--num-samples", "300", "--step-ms", "5", "--output-dir", str(out)], tmp_path)
    run_dir = _wait_for_samples(out, 3, proc)
    # Gone from its path at once (rmtree in place races with the writer's renames and can fail
    # itself), then deleted.
    gone = tmp_path / "gone"
    run_dir.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output[-3000:]
    assert f"the run directory {run_dir} was removed" in output, output[-3000:]
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_tiny_svd_resume_equals_uninterrupted(tmp_path, no_fault):
    """A tiny-SVD run that lost its last sample (killed before writing it) is completed by
    --resume with videos and latents bitwise equal to the uninterrupted run's."""
    argv = [
        sys.executable,
        "-m",
        "ppsvd",
        "run",
        "--model-id",
        "tiny",
        "--device",
        "cpu",
        "--nproc",
        "2",
        "--num-samples",
        "2",
        "--total-steps",
        "4",
        "--no-progress",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=150)
    assert first.returncode == 0, first.stderr[-3000:]
    full = next((tmp_path / "runs").iterdir())
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    manifest = json.loads((cut / "manifest.json").read_text())
    last = manifest["samples"][-1]
    for name in [last["latents"], *last["videos"]]:
        (cut / name).unlink()
    (cut / "manifest.json").unlink()  # as a stopped run leaves it: a journal, no final manifest
    (cut / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in manifest["samples"][:-1]))
    done = subprocess.run(
        [sys.executable, "-m", "ppsvd", "run", "--resume", str(cut), "--nproc", "1", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    for entry in manifest["samples"]:
        # Tensors, not file bytes: safetensors writes its metadata keys in no fixed order.
        assert torch.equal(
            load_file(str(cut / entry["latents"]))["latents"], load_file(str(full / entry["latents"]))["latents"]
        )
        for name in entry["videos"]:
            assert (cut / name).read_bytes() == (full / name).read_bytes(), name


# -- in-process: bad input, resume refusals, files ----------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    monkeypatch.setattr("ppsvd.runtime.launch.launch", lambda *a, **k: pytest.fail("launched workers on bad input"))


def test_bad_output_dir_is_one_line_exit_2(tmp_path, capsys, no_launch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for bad, needle in (
        (a_file, "is a file"),
        (Path("/proc/ppsvd-x"), "cannot create it"),
        (loop / "x", "cannot create it"),
    ):
        code, _, err = run_cli(capsys, *SIM, "--output-dir", str(bad))
        assert code == 2 and needle in err and str(bad) in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_partial_torchrun_environment_is_named(capsys, monkeypatch, no_launch):
    for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(capsys, *SIM, "--nproc", "2")
    assert code == 2 and "partial torchrun environment: RANK=0" in err and "WORLD_SIZE" in err, err


def test_shape_too_big_for_memory_is_refused_with_one_that_fits(tmp_path, capsys, no_launch):
    code, _, err = run_cli(
        capsys, "simulate", "--latent-shape", "4096", "4", "64", "512", "512", "--output-dir", str(tmp_path)
    )
    assert code == 2 and "--latent-shape 4096 4 64 512 512" in err, err
    best = re.search(r"use --latent-shape (\d+) 4 64 512 512, the largest that fits", err)
    assert best and 1 <= int(best.group(1)) < 4096, err


def _saved_run(tmp_path: Path, **changes) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig.from_options(
        model="synthetic", total_steps=4, latent_shape=(1, 4, 1, 8, 8), num_samples=6, seed=3, nproc=2, **changes
    )
    (run_dir / "config.json").write_text(json.dumps(config.to_json()))
    return run_dir


def test_resume_refuses_options_that_change_samples(tmp_path, capsys, no_launch):
    run_dir = _saved_run(tmp_path)
    code, _, err = run_cli(
        capsys, "simulate", "--resume", str(run_dir), "--seed", "4", "--total-steps", "8", "--nproc", "3"
    )
    assert code == 2, err
    assert "--seed 4 (the run used 3)" in err and "--total-steps 8 (the run used 4)" in err and "--nproc" not in err
    code, _, err = run_cli(capsys, "simulate", "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in err
    # The guidance split is within a bound, every other layout bitwise: a run never mixes them.
    code, _, err = run_cli(capsys, "simulate", "--resume", str(run_dir), "--strategy", "cfg", "--nproc", "2")
    assert code == 2 and "--strategy cfg (the run used pipeline)" in err, err


def test_resume_keeps_only_intact_listed_samples(tmp_path, monkeypatch, capsys):
    """Listed with a loadable file: kept. Listed but the file is gone or broken, or on disk but
    not listed: generated again. The workers get exactly the missing indices."""
    from safetensors.torch import save_file

    run_dir = _saved_run(tmp_path)
    (run_dir / "latents").mkdir()
    entries = []
    for i in range(4):
        name = f"latents/s{i}.safetensors"
        save_file({"latents": torch.zeros(1, 1, 4, 8, 8)}, str(run_dir / name))
        entries.append({"index": i, "latents": name})
    (run_dir / entries[1]["latents"]).unlink()  # listed, file gone
    (run_dir / entries[2]["latents"]).write_bytes(b"not safetensors")  # listed, unloadable
    save_file({"latents": torch.zeros(1, 1, 4, 8, 8)}, str(run_dir / "latents" / "s5.safetensors"))  # unlisted
    (run_dir / "latents" / ".tmp-s4-dead.safetensors").write_bytes(b"")  # a killed writer's temp file
    (run_dir / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"index": 4, "lat')
    seen = {}

    def fake_launch(config, run_dir=None, *, indices=None, **_):
        seen.update(indices=indices, run_dir=run_dir, nproc=config.layout.nproc)
        raise SystemExit(0)

    monkeypatch.setattr("ppsvd.runtime.launch.launch", fake_launch)
    code, _, err = run_cli(capsys, "simulate", "--resume", str(run_dir), "--nproc", "3")
    assert code == 0, err
    assert seen == {"indices": (1, 2, 4, 5), "run_dir": run_dir, "nproc": 3}
    assert "2 of 6 samples kept, 4 to generate" in err
    assert [json.loads(line)["index"] for line in (run_dir / "manifest.jsonl").read_text().splitlines()] == [0, 3]
    assert not list(run_dir.rglob(".tmp-*"))


def test_files_follow_the_umask(tmp_path):
    from ppsvd.io.atomic import write_bytes_atomic

    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    old = os.umask(0o002)
    try:
        write_bytes_atomic(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o664
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_journal_appends_one_line_per_sample_and_close_checks_files(tmp_path):
    from types import SimpleNamespace

    from ppsvd.errors import OutputsLost
    from ppsvd.io.results import ResultWriter, listed_entries
    from ppsvd.planning.steps import partition_steps

    config = RunConfig.from_options(model="synthetic", total_steps=4, latent_shape=(1, 4, 1, 8, 8), num_samples=3)
    writer = ResultWriter(tmp_path, config, partition_steps(4, 1))
    for i in range(3):
        writer.write(
            SimpleNamespace(index=i, latents=torch.full((1, 1, 4, 8, 8), float(i)), frames=None, meta={"name": f"x{i}"})
        )
        assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == i + 1
        assert not (tmp_path / "manifest.json").exists()
    assert [e["index"] for e in listed_entries(tmp_path)] == [0, 1, 2]
    (tmp_path / "latents" / "x1.safetensors").unlink()
    with pytest.raises(OutputsLost, match="x1.safetensors"):
        writer.close()
