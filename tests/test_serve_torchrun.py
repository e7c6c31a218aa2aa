"""`ppsvd serve` under torchrun as a user starts it: `python -m torch.distributed.run ... -m ppsvd serve`,
driven by the official `openai` client, checked against `ppsvd run`; a killed rank and torchrun's
restart; the state dir check for several hosts (one host, each rank in a directory of its own)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.serve_helpers import Server, free_port, png_bytes, rank_pid
from tests.test_serve import SYNTHETIC, TINY, run_reference, served_outputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks the videos API deprecated


def _ppsvd_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ppsvd: error:")]


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_under_torchrun_jobs_equal_ppsvd_run_and_sigterm_drains(tmp_path):
    """Two ranks (rank 0 hosts the service and runs stage 0): two concurrent jobs through the
    official client, bitwise equal to `ppsvd run`; SIGTERM to torchrun drains (503, the job in
    flight finishes, the queue is kept), with rank 0's one line and no traceback of ppsvd's."""
    import openai

    images = [png_bytes(64, 64), png_bytes(72, 56)]
    extra = [{"seed": 3}, {"seed": 11, "motion_bucket_id": 90, "fps": 7}]
    state = tmp_path / "state"
    torchrun = ("--nproc-per-node", "2", "--shutdown-timeout", "120")  # the drain's time, as docs/serve.md says
    with Server(state, *TINY, "--transport", "gloo", torchrun=torchrun, rank_exit_codes=True) as server:
        server.wait_ready(180)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

        def submit(k: int):
            return client.videos.create_and_poll(
                prompt=f"clip {k}",
                input_reference=(f"in{k}.png", images[k], "image/png"),
                extra_body=extra[k],
                poll_interval_ms=100,
            )

        with ThreadPoolExecutor(2) as pool:
            videos = list(pool.map(submit, range(2)))
        assert [v.status for v in videos] == ["completed"] * 2, [v.error for v in videos]
        served = [served_outputs(server, v.id) for v in videos]
        assert client.videos.download_content(videos[0].id).content == served[0][1]
        overview = server.get("/v1/service").json()
        assert [lane["label"] for lane in overview["lanes"]] == ["stage 0", "stage 1"]

        # More than the pipeline holds (a job per stage and the one stage 0 asked for next): some stay queued.
        more = [server.post_image(images[0], seed=100 + k).json()["id"] for k in range(6)]
        server.wait_for(lambda: server.status(more[0]) == "in_progress", what="a job in flight")
        # As a service manager stops a unit: SIGTERM to every process, so rank 0 gets it twice
        # (once more from torchrun, which passes it on to every rank); still one drain.
        os.kill(rank_pid(server.proc.pid, 0), signal.SIGTERM)
        server.signal(signal.SIGTERM)
        server.wait_for(
            lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503, 10, what="readyz saying draining"
        )
        refused = server.post_image(images[0], seed=1)
        assert refused.status_code == 503 and refused.headers.get("retry-after")
        assert server.wait_exit(90) != 0  # torchrun's own code after a signal
        output = server.output()
    lines = _ppsvd_lines(output)
    assert len(lines) == 1 and "interrupted by SIGTERM: drained" in lines[0], output[-3000:]
    # Rank 0 leaves with 128 + SIGTERM; rank 1 ignored the signal and ended with the stream.
    assert "ppsvd rank 0 exit 143" in output and "ppsvd rank 1 exit 0" in output, output[-3000:]
    # The only traceback is torchrun's own (its SignalException), none of ppsvd's.
    assert output.count("Traceback") <= 1 and ("Traceback" not in output or "SignalException" in output), output
    statuses = dict(sqlite3.connect(state / "jobs.sqlite3").execute("SELECT id, status FROM jobs").fetchall())
    assert statuses[more[0]] == "completed" and set(statuses.values()) <= {"completed", "queued"}
    assert list(statuses.values()).count("queued") >= 1, statuses  # kept for the next start

    folder = tmp_path / "images"
    folder.mkdir()
    jobs = []
    for k in range(2):
        (folder / f"in{k}.png").write_bytes(images[k])
        jobs.append({"image": str(folder / f"in{k}.png"), **extra[k]})
    reference = run_reference(tmp_path, jobs)
    for k in range(2):
        assert torch.equal(served[k][0], reference[k][0])
        assert served[k][1] == reference[k][1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_under_torchrun_a_killed_rank_is_restarted_by_torchrun_and_every_job_completes(tmp_path):
    image = png_bytes(64, 64)
    args = (*SYNTHETIC, "--total-steps", "8", "--step-ms", "100", "--transport", "gloo")
    torchrun = ("--nproc-per-node", "2", "--max-restarts", "1")
    with Server(tmp_path / "state", *args, torchrun=torchrun) as server:
        server.wait_ready(120)
        ids = [server.post_image(image, seed=k).json()["id"] for k in range(4)]
        server.wait_for(lambda: server.status(ids[0]) == "in_progress", what="a job in flight")
        os.kill(rank_pid(server.proc.pid, 1), signal.SIGKILL)

        def statuses():
            try:
                return [server.status(i) for i in ids]
            except httpx.HTTPError:  # rank 0 restarts: the port is closed a moment
                return None

        server.wait_for(lambda: statuses() == ["completed"] * 4, 120, what="every job, after torchrun's restart")
        log = server.output()
        assert "stage 1 on host" in log and "torchrun starts the service again (restart 1 of --max-restarts 1)" in log
        assert server.get("/v1/service").json()["phase"] == "ready"
        assert len(server.get("/v1/videos", params={"limit": 100}).json()["data"]) == 4


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_under_torchrun_a_state_dir_the_last_stage_does_not_see_is_refused_in_one_line(tmp_path):
    """As on two hosts without a shared filesystem: each rank runs in a directory of its own, so
    the same relative --state-dir names two different directories."""
    for rank in (0, 1):
        (tmp_path / f"host{rank}").mkdir()
    serve = f"exec {sys.executable} -m ppsvd serve {' '.join(SYNTHETIC)} --total-steps 4 --timeout 3"
    serve += f" --port {free_port()} --state-dir state"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    cmd += ["sh", "-c", f"cd host$LOCAL_RANK && {serve}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert done.returncode != 0
    lines = _ppsvd_lines(done.stderr)
    assert lines, done.stderr[-3000:]
    # Rank 1 says what it does not see, rank 0 repeats it as the service's reason; nothing else of ppsvd's.
    assert set(lines) == {lines[0]} and len(lines) <= 2, lines
    line = lines[0]
    assert "--state-dir state: rank 1 on host" in line and str((tmp_path / "host0" / "state").resolve()) in line, line
    assert "shares" in line and "--timeout 3" in line
    assert done.stderr.count("Traceback") <= 1 and "ChildFailedError" in done.stderr  # torchrun's own only
    assert not (tmp_path / "host1" / "state").exists()
