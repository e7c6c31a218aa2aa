"""A failed stage stops every stage quickly, the command names it, and no process is left behind."""

import os
import re
import subprocess
import sys
import time
import uuid

import psutil
import pytest

BASE = [
    sys.executable,
    "-m",
    "ppsvd",
    "simulate",
    "--nproc",
    "3",
    "--total-steps",
    "12",
    "--latent-shape",
    "1",
    "4",
    "2",
    "8",
    "8",
    "--num-samples",
    "40",
    "--step-ms",
    "25",
    "--no-progress",
]


def _tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PPSVD_TEST_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _run_with_fault(tmp_path, fault: str, transport: str = "gloo"):
    tag = uuid.uuid4().hex
    env = {**os.environ, "PPSVD_FAULT": fault, "PPSVD_TEST_TAG": tag, "OMP_NUM_THREADS": "1"}
    cmd = BASE + ["--transport", transport, "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    ended = time.time()
    return proc, ended, tag


def _fault_time(stderr: str) -> float:
    match = re.search(r"injecting fault .* at ([0-9.]+)", stderr)
    assert match, stderr[-2000:]
    return float(match.group(1))


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "fault,transport,expect",
    [
        ("1:3:raise", "gloo", r"stage 1 failed: .*injected fault"),  # the fast lane keeps this one
        pytest.param("1:3:kill", "gloo", r"stage 1 (was killed by SIGKILL|failed)", marks=pytest.mark.slow),
        pytest.param("2:3:raise", "zmq", r"stage 2 failed: .*injected fault", marks=pytest.mark.slow),
        pytest.param("1:3:exit0", "zmq", r"stage 1 failed: stopped responding", marks=pytest.mark.slow),
    ],
)
def test_failed_stage_stops_all_within_10s_and_is_named(tmp_path, fault, transport, expect):
    proc, ended, tag = _run_with_fault(tmp_path, fault, transport)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert re.search(expect, proc.stderr), proc.stderr[-2000:]
    assert ended - _fault_time(proc.stderr) < 10.0
    # The summary line is one line, no traceback.
    assert "Traceback" not in proc.stderr
    time.sleep(0.5)
    assert _tagged_processes(tag) == [], "worker processes were left behind"
