"""Two torchrun agents on this machine, 4 stages across them (issue 13): what a multi-node run
does, with loopback standing in for the network. The multi-node line of docs/multinode.md is this test's.

Reachability is decided from where the peers run (published through the rendezvous store), so
zmq works between the agents; a stage killed on one agent stops both, naming the stage and its
host; Ctrl-C of one agent ends both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import read_latents, reference_latents, small_config

pytestmark = pytest.mark.slow

SAMPLES, STEPS = 8, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_command(port: int, *simulate_args: str) -> list[str]:
    """One agent's command line: the same as on two real hosts, with 127.0.0.1 as the endpoint
    (the c10d rendezvous assigns ranks itself: no --node-rank)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "-m",
        "ppsvd",
        "simulate",
        *simulate_args,
    ]


def test_the_documented_multinode_line_is_the_one_tested_here():
    line = " ".join(["torchrun", *agent_command(29500, "--transport", "zmq")[3:]])
    docs = Path(__file__).parents[1] / "docs"
    assert line in (docs / "multinode.md").read_text() and line in (docs / "run.md").read_text()


def _start_agents(tmp_path: Path, *args: str, fault: str | None = None) -> list[subprocess.Popen]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(_socket_dir(tmp_path))}
    env.pop("PPSVD_FAULT", None)
    if fault:
        env["PPSVD_FAULT"] = fault
    return [
        subprocess.Popen(
            agent_command(port, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        for r in (0, 1)
    ]


def _ppsvd_leftovers(tmp_path: Path) -> list[Path]:
    return list(_socket_dir(tmp_path).glob("ppsvd-*"))


def _socket_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tmp"
    path.mkdir(exist_ok=True)
    return path


def _finish(agents: list[subprocess.Popen], timeout_s: float) -> tuple[list[int], str, list[float]]:
    """Wait for both agents; returns their exit codes, their output together and when each ended."""
    outputs, ended = [], []
    deadline = time.monotonic() + timeout_s
    for agent in agents:
        try:
            out, _ = agent.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for a in agents:
                with _quiet():
                    os.killpg(a.pid, signal.SIGKILL)
            pytest.fail(f"the agents did not end within {timeout_s} s")
        outputs.append(out)
        ended.append(time.time())
    return [a.returncode for a in agents], "\n".join(outputs), ended


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


def _simulate_args(out: Path, transport: str, *extra: str) -> list[str]:
    return [
        "--total-steps",
        str(STEPS),
        "--latent-shape",
        "1",
        "4",
        "2",
        "8",
        "8",
        "--seed",
        "7",
        "--transport",
        transport,
        "--output-dir",
        str(out),
        "--timeout",
        "60",
        *extra,
    ]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", [["gloo"], ["zmq", "--zmq-endpoint", "tcp"]], ids=["gloo", "zmq-tcp"])
def test_two_agents_run_every_sample_once_in_order_bitwise_equal(tmp_path, transport):
    out = tmp_path / "out"
    args = _simulate_args(out, transport[0], *transport[1:], "--num-samples", str(SAMPLES), "--step-ms", "5")
    codes, output, _ = _finish(_start_agents(tmp_path, *args), 140)
    assert codes == [0, 0], output[-4000:]
    (run_dir,) = list(out.iterdir())
    got = read_latents(run_dir)
    want = reference_latents(small_config(tmp_path, total_steps=STEPS, num_samples=SAMPLES))
    assert sorted(got) == list(range(SAMPLES))
    assert all(torch.equal(got[i], want[i]) for i in want)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["index"] for s in manifest["samples"]] == list(range(SAMPLES))
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 4
    timeline = json.loads((run_dir / "timeline.json").read_text())
    assert sorted(s["stage"] for s in timeline["stages"]) == [0, 1, 2, 3]
    # Rank 0 drew every stage's progress, the other agent's stages included.
    for stage in range(4):
        assert re.search(rf"stage {stage}\D{{0,20}}{2 * SAMPLES}/{2 * SAMPLES}", output), output[-3000:]
    assert "efficiency" in output.lower()
    assert not _ppsvd_leftovers(tmp_path), "sockets were left behind"


@pytest.mark.timeout(120)
def test_a_stage_killed_on_one_agent_stops_both_naming_it_and_its_host(tmp_path):
    out = tmp_path / "out"
    args = _simulate_args(out, "zmq", "--num-samples", "200", "--step-ms", "25", "--no-progress")
    codes, output, ended = _finish(_start_agents(tmp_path, *args, fault="3:3:kill"), 100)
    match = re.search(r"injecting fault 'kill' in stage 3 .* at ([0-9.]+)", output)
    assert match, output[-3000:]
    assert all(code != 0 for code in codes), output[-3000:]
    assert max(ended) - float(match.group(1)) < 10.0, output[-3000:]
    assert f"stage 3 on host {socket.gethostname()} failed" in output, output[-3000:]
    assert not re.search(r"stage [012]\b[^\n]* failed", output), output[-3000:]


@pytest.mark.timeout(120)
def test_ctrl_c_of_one_agent_ends_both(tmp_path):
    out = tmp_path / "out"
    agents = _start_agents(
        tmp_path, *_simulate_args(out, "zmq", "--num-samples", "400", "--step-ms", "25", "--no-progress")
    )
    deadline = time.monotonic() + 80
    while not list(out.glob("*/latents/sample_*.safetensors")):  # both agents are past the rendezvous
        assert time.monotonic() < deadline and all(a.poll() is None for a in agents), "the run did not start"
        time.sleep(0.1)
    sent = time.time()
    os.killpg(agents[0].pid, signal.SIGINT)  # what Ctrl-C in agent 0's terminal does
    codes, output, ended = _finish(agents, 60)
    assert all(code != 0 for code in codes), output[-3000:]
    assert max(ended) - sent < 15.0, output[-3000:]
    assert not _ppsvd_leftovers(tmp_path), "sockets were left behind"
