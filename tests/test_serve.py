"""`ppsvd serve` as a user runs it: a real server subprocess on a free loopback port, driven by the
official `openai` client (and plain HTTP where the client has no call), checked against `ppsvd run`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import run_cli
from tests.serve_helpers import Server, children_of, png_bytes

TINY = ("--model-id", "tiny", "--device", "cpu", "--num-inference-steps", "6")
SYNTHETIC = ("--model-id", "synthetic", "--device", "cpu", "--latent-shape", "1", "4", "2", "8", "8")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks the videos API deprecated


def run_reference(tmp_path: Path, jobs: list[dict]) -> dict[int, tuple[torch.Tensor, bytes, Path]]:
    """`ppsvd run` (one process) on the jobs' images, seeds and conditioning:
    index -> (latents, MP4 bytes, frames dir)."""
    inputs = tmp_path / "jobs.jsonl"
    inputs.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    out = tmp_path / "reference"
    cmd = [sys.executable, "-m", "ppsvd", "run", *TINY, "--nproc", "1", "--inputs", str(inputs)]
    cmd += ["--output-dir", str(out), "--no-progress", "--save-frames"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    (run_dir,) = out.iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {
        e["index"]: (
            load_file(str(run_dir / e["latents"]))["latents"],
            (run_dir / e["videos"][0]).read_bytes(),
            run_dir / e["frames"][0],
        )
        for e in manifest["samples"]
    }


def served_outputs(server: Server, job_id: str) -> tuple[torch.Tensor, bytes]:
    latents = server.get(f"/v1/videos/{job_id}/content", params={"variant": "latents"})
    assert latents.status_code == 200, latents.text
    path = server.state_dir / "latents.tmp.safetensors"
    path.write_bytes(latents.content)
    tensor = load_file(str(path))["latents"]
    path.unlink()
    return tensor, server.get(f"/v1/videos/{job_id}/content").content


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_openai_client_three_jobs_at_once_equal_ppsvd_run(tmp_path):
    """Three concurrent jobs with their own images, seeds and conditioning through the official
    client: bitwise the latents, the MP4 bytes and the first frame of `ppsvd run`; and the key,
    the limits and every call of the client on the same server."""
    import openai

    key = "serve-test-key-0123456789"
    images = [png_bytes(80, 48), png_bytes(64, 64, flip=True), png_bytes(72, 56)]
    extra = [{"seed": 3}, {"seed": 11, "motion_bucket_id": 90, "fps": 7}, {"seed": 42, "noise_aug_strength": 0.05}]
    args = (*TINY, "--nproc", "2", "--transport", "gloo", "--max-upload-mb", "0.2")
    with Server(tmp_path / "state", *args, api_key=key) as server:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)

        def submit(k: int):
            return client.videos.create_and_poll(
                prompt=f"clip {k}",
                input_reference=(f"in{k}.png", images[k], "image/png"),
                size="64x64",
                extra_body=extra[k],
                poll_interval_ms=100,
            )

        with ThreadPoolExecutor(3) as pool:
            videos = list(pool.map(submit, range(3)))
        assert [v.status for v in videos] == ["completed"] * 3, [v.error for v in videos]
        assert [v.progress for v in videos] == [100] * 3
        assert videos[1].model_extra["motion_bucket_id"] == 90 and videos[0].size == "64x64"

        # Every call of the client.
        assert client.videos.retrieve(videos[0].id).status == "completed"
        listed = [v.id for v in client.videos.list(limit=2, order="asc")]  # two pages
        assert sorted(listed) == sorted(v.id for v in videos) and len(listed) == 3
        mp4 = {v.id: client.videos.download_content(v.id).content for v in videos}
        thumbnail = client.videos.download_content(videos[0].id, variant="thumbnail").content
        assert mp4[videos[0].id][4:8] == b"ftyp" and thumbnail[:8] == b"\x89PNG\r\n\x1a\n"
        models = client.models.list()
        assert [m.id for m in models] == ["tiny"]

        # The limits and the errors, in OpenAI's shape with the right codes.
        with pytest.raises(openai.BadRequestError) as info:
            client.videos.create(prompt="x", input_reference=("a.png", images[0], "image/png"), size="1280x720")
        assert "64x64" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            client.videos.create(prompt="x", input_reference=("a.png", b"this is no image", "image/png"))
        assert info.value.body["code"] == "invalid_image"
        with pytest.raises(openai.APIStatusError) as info:
            client.videos.create(prompt="x", input_reference=("a.png", os.urandom(300_000), "image/png"))
        assert info.value.status_code == 413
        anonymous = httpx.get(f"{server.url}/v1/videos", timeout=10)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.get(f"{server.url}/v1/videos", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200  # probes need no key
        assert server.get("/v1/videos/video_" + "0" * 32).status_code == 404
        assert server.get("/v1/videos/../../jobs.sqlite3").status_code == 404
        events = server.get(f"/v1/videos/{videos[0].id}/events").text
        assert "event: completed" in events

        # docs/serve.md's client example, as a file in a fresh process.
        snippet = _doc_snippet(Path(__file__).parents[1] / "docs" / "serve.md", "from openai import OpenAI")
        (tmp_path / "cat.png").write_bytes(images[0])
        snippet = snippet.replace("http://127.0.0.1:8000", server.url).replace('api_key="unused"', f'api_key="{key}"')
        (tmp_path / "example.py").write_text(snippet)
        done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "cat.mp4").read_bytes()[4:8] == b"ftyp"

        # Deleting a finished job removes its files.
        gone = client.videos.delete(videos[2].id)
        assert gone.deleted and not list((server.state_dir / "outputs" / "videos").glob(f"{videos[2].id}*"))
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(videos[2].id)

        # The same as `ppsvd run` with the same image, seed and settings, bitwise.
        folder = tmp_path / "images"
        folder.mkdir()
        jobs = []
        for k in range(3):
            (folder / f"in{k}.png").write_bytes(images[k])
            jobs.append({"image": str(folder / f"in{k}.png"), **extra[k]})
        reference = run_reference(tmp_path, jobs)
        for k, video in enumerate(videos[:2]):
            ref_latents, ref_mp4, ref_frames = reference[k]
            latents, _ = served_outputs(server, video.id)
            assert torch.equal(latents, ref_latents)
            assert mp4[video.id] == ref_mp4
        first_frame = sorted(reference[0][2].glob("*.png"))[0].read_bytes()
        from io import BytesIO

        from PIL import Image

        assert list(Image.open(BytesIO(thumbnail)).getdata()) == list(Image.open(BytesIO(first_frame)).getdata())
    assert server.proc.returncode == 128 + signal.SIGTERM


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_with_jobs_in_flight_then_restart_completes_each_once(tmp_path):
    """SIGKILL of the server with jobs queued and in flight; a start on the same state dir completes
    every accepted job exactly once, bitwise equal to `ppsvd run`; then SIGTERM drains (503, exit 143)."""
    image = png_bytes(64, 64)
    state = tmp_path / "state"
    args = (*TINY, "--nproc", "2", "--transport", "zmq")
    seeds = list(range(5, 15))
    with Server(state, *args) as first:
        first.wait_ready()
        ids = [first.post_image(image, seed=s).json()["id"] for s in seeds]

        def some_done_some_flying():
            videos = first.get("/v1/videos", params={"limit": 100}).json()["data"]
            statuses = [v["status"] for v in videos]
            return videos if {"completed", "in_progress", "queued"} <= set(statuses) else None

        before = first.wait_for(some_done_some_flying, what="one job completed, one in flight and one queued")
        workers = children_of(first.proc.pid)
        assert workers
        first.proc.kill()
        first.wait_exit(10)
        done_before = {v["id"]: v["completed_at"] for v in before if v["status"] == "completed"}
        # A queued job whose image is replaced by junk on disk fails alone, with its reason.
        broken = [v["id"] for v in before if v["status"] == "queued"][-1]
        (upload,) = (state / "uploads").glob(f"{broken}.*")
        upload.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
        # PR_SET_PDEATHSIG: the workers die with the server, no orphan keeps the GPU busy.
        first.wait_for(lambda: not any(_alive(p) for p in workers), 15, what="the workers ending")
    assert len(done_before) < len(ids)

    with Server(state, *args) as second:
        second.wait_ready()
        second.wait_for(
            lambda: all(second.status(i) in ("completed", "failed") for i in ids), 120, what="every job ending"
        )
        after = {i: second.get(f"/v1/videos/{i}").json() for i in ids}
        assert after[broken]["status"] == "failed" and after[broken]["error"]["code"] == "job_failed"
        assert "the job's image" in after[broken]["error"]["message"], after[broken]["error"]
        ids.remove(broken)
        assert all(after[i]["status"] == "completed" for i in ids)
        assert len(second.get("/v1/videos", params={"limit": 100}).json()["data"]) == len(ids) + 1
        for job_id, completed_at in done_before.items():  # finished before the kill: not run again
            assert after[job_id]["completed_at"] == completed_at
        assert not [p for p in state.rglob("*") if p.name.startswith(".tmp-")]
        served = {i: served_outputs(second, i) for i in ids}

        # Draining: new jobs get 503, the jobs in flight finish, the queue stays for the next start.
        more = [second.post_image(image, seed=100 + k).json()["id"] for k in range(4)]
        second.wait_for(lambda: second.status(more[0]) == "in_progress", what="a job in flight")
        second.signal(signal.SIGTERM)
        second.wait_for(
            lambda: httpx.get(f"{second.url}/readyz", timeout=5).status_code == 503, 10, what="readyz saying draining"
        )
        refused = second.post_image(image, seed=1)
        assert refused.status_code == 503 and refused.headers.get("retry-after")
        assert second.wait_exit(60) == 128 + signal.SIGTERM
        last = second.output().strip().splitlines()[-1]
        assert "interrupted by SIGTERM: drained" in last and "kept in" in last
    statuses = dict(sqlite3.connect(state / "jobs.sqlite3").execute("SELECT id, status FROM jobs").fetchall())
    assert statuses[more[0]] == "completed" and set(statuses.values()) <= {"completed", "queued", "failed"}
    assert statuses[broken] == "failed"

    image_path = tmp_path / "in.png"
    image_path.write_bytes(image)
    reference = run_reference(tmp_path, [{"image": str(image_path), "seed": s} for s in seeds])
    for job_id in ids:
        k = seeds.index(after[job_id]["seed"])
        assert torch.equal(served[job_id][0], reference[k][0])
        assert served[job_id][1] == reference[k][1]


def _doc_snippet(path: Path, first_line: str) -> str:
    """The fenced python block of a doc that starts with first_line."""
    blocks = path.read_text().split("```python\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if b.startswith(first_line)]
    return block


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cancel_a_queued_and_a_running_job_and_a_full_queue(tmp_path):
    image = png_bytes(64, 64)
    args = (*SYNTHETIC, "--nproc", "2", "--total-steps", "8", "--step-ms", "150", "--max-queue", "2")
    with Server(tmp_path / "state", *args) as server:
        server.wait_ready()
        posted = [server.post_image(image, seed=k) for k in range(6)]
        codes = [r.status_code for r in posted]
        assert 429 in codes and set(codes) <= {200, 429}, codes
        full = posted[codes.index(429)]
        assert full.json()["error"]["code"] == "queue_full" and int(full.headers["retry-after"]) >= 1
        ids = [r.json()["id"] for r in posted if r.status_code == 200]
        assert len(ids) >= 2
        running, queued = ids[0], ids[-1]

        # A queued job leaves the queue: it never starts.
        assert server.status(queued) == "queued"
        deleted = httpx.delete(f"{server.url}/v1/videos/{queued}", timeout=10).json()
        assert deleted == {"id": queued, "object": "video.deleted", "deleted": True}
        assert server.get(f"/v1/videos/{queued}").status_code == 404

        # A running job leaves the pipeline at its next stage boundary; its files never appear.
        server.wait_for(
            lambda: server.get(f"/v1/videos/{running}").json().get("stage") == "stage 0", what="the job on stage 0"
        )
        assert httpx.delete(f"{server.url}/v1/videos/{running}", timeout=10).status_code == 200
        lanes = server.wait_for(
            lambda: (lambda s: s if running not in json.dumps(s) else None)(server.get("/v1/service").json()),
            what="the cancelled job leaving every lane",
        )
        assert lanes["phase"] == "ready"
        rest = [i for i in ids if i not in (running, queued)]
        server.wait_for(lambda: all(server.status(i) == "completed" for i in rest), what="the other jobs")
        time.sleep(1.0)  # past any stage boundary the cancelled job could still cross
        outputs = server.state_dir / "outputs"
        assert not [p for p in outputs.rglob(f"{running}*")] and not [p for p in outputs.rglob(f"{queued}*")]
        assert not list((server.state_dir / "uploads").glob(f"{running}*"))
        # Server-sent events of a new job: queued or in progress, then completed.
        new = server.post_image(image, seed=99).json()["id"]
        with httpx.stream("GET", f"{server.url}/v1/videos/{new}/events", timeout=30) as stream:
            kinds = [line.split(": ", 1)[1] for line in stream.iter_lines() if line.startswith("event: ")]
        assert kinds[-1] == "completed" and set(kinds[:-1]) <= {"queued", "in_progress"}
        # The image as a data URL in a JSON body; an http(s) URL only when the server allows it.
        import base64

        data_url = "data:image/png;base64," + base64.b64encode(image).decode()
        as_json = httpx.post(f"{server.url}/v1/videos", json={"input_reference": {"image_url": data_url}, "seed": 1})
        assert as_json.status_code == 200, as_json.text
        server.wait_for(lambda: server.status(as_json.json()["id"]) == "completed", what="the JSON job")
        remote = httpx.post(
            f"{server.url}/v1/videos", json={"input_reference": {"image_url": "http://127.0.0.1:9/a.png"}}
        )
        assert remote.status_code == 400 and "--allow-image-urls" in remote.json()["error"]["message"]
    # The drain's end of stream counted what each stage sent on, the dropped sample not included.
    assert server.proc.returncode == 128 + signal.SIGTERM, server.output()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_stage_killed_mid_job_the_job_runs_again_and_the_service_stays_up(tmp_path):
    image = png_bytes(64, 64)
    args = (*SYNTHETIC, "--nproc", "2", "--total-steps", "8", "--step-ms", "20", "--transport", "zmq")
    with Server(tmp_path / "state", *args, env={"PPSVD_FAULT": "1:1:kill"}) as server:
        server.wait_ready()
        ids = [server.post_image(image, seed=k).json()["id"] for k in range(3)]
        server.wait_for(lambda: all(server.status(i) == "completed" for i in ids), 120, what="every job")
        log = server.output()
        assert "stage 1 was killed by SIGKILL" in log and "restart 1" in log
        overview = server.get("/v1/service").json()
        assert overview["restarts"] == 1 and overview["phase"] == "ready"
        # /metrics: the restart, and lane counts that go on across it. The new workers count from 0
        # and rerun the 2 jobs; stage 0 had finished sample 0 well before the kill, so its total
        # is at least 1 + 2 (a count a stage made just before it died may be missed: read at 10 Hz).
        from prometheus_client.parser import text_string_to_metric_families

        def scrape() -> dict[str, float]:
            families = text_string_to_metric_families(server.get("/metrics").text)
            return {f"{s.name}{sorted(s.labels.values())}": s.value for f in families for s in f.samples}

        def counted() -> dict[str, float] | None:
            m = scrape()
            stage0, stage1 = (m[f"ppsvd_samples_completed_total['stage {k}']"] for k in (0, 1))
            return m if stage0 >= 3 and stage1 >= 2 else None

        metrics = server.wait_for(counted, 10, what="the lanes' samples counted across the restart")
        assert metrics["ppsvd_worker_restarts_total[]"] == 1
        assert metrics["ppsvd_jobs_finished_total['completed']"] == 3
        assert server.post_image(image, seed=9).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_repeated_crashes_at_start_exit_1_naming_the_stage(tmp_path):
    args = (*SYNTHETIC, "--nproc", "2", "--total-steps", "4")
    with Server(tmp_path / "state", *args, env={"PPSVD_FAULT": "1:start:raise"}) as server:
        code = server.wait_exit(150)
        lines = server.output().strip().splitlines()
    assert code == 1
    assert "stage 1 failed" in lines[-1] and "3 times in a row" in lines[-1], lines[-3:]


def test_listening_beyond_loopback_needs_an_api_key(capsys, monkeypatch):
    monkeypatch.delenv("PPSVD_API_KEY", raising=False)
    code, _, err = run_cli(capsys, "serve", "--model-id", "tiny", "--device", "cpu", "--host", "0.0.0.0")
    assert code == 2 and "--host 0.0.0.0" in err and "PPSVD_API_KEY" in err
    code, _, err = run_cli(capsys, "serve", "--model-id", "tiny", "--device", "cpu", "--api-key", "short")
    assert code == 2 and "API key" in err


def test_serve_takes_every_pipeline_option_of_run():
    """serve's options are run's (commands/options.py) minus what a job gives or a run writes: an
    option added to run (e.g. a compile flag) fails here until serve has it too."""
    from typer.main import get_command

    from ppsvd.cli import app

    group = get_command(app)
    names = {name: {p.name for p in group.commands[name].params} for name in ("run", "serve")}
    per_run_only = {
        "ctx",
        "image",
        "inputs",
        "num_samples",
        "seed",
        "save_frames",
        "save_video",
        "save_latents",
        "output_dir",
        "log_format",
        "progress_interval",
        "no_progress",
        "resume",
    }
    assert names["run"] - per_run_only <= names["serve"], names["run"] - per_run_only - names["serve"]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["data", "cfg"])
def test_other_layouts_serve_the_same_latents(tmp_path, strategy):
    """Data-parallel workers take jobs like free replicas; a guidance pair's halves start the same
    job (the unconditional half hands the spec to the conditional one): both bitwise equal to one process."""
    from ppsvd.config import RunConfig
    from ppsvd.io.samples import SampleSpec
    from ppsvd.models.base import build_stage_model
    from ppsvd.planning.steps import partition_steps

    image = png_bytes(64, 64)
    args = (*SYNTHETIC, "--nproc", "2", "--strategy", strategy, "--total-steps", "8", "--transport", "gloo")
    seeds = [3, 4, 5, 6]
    with Server(tmp_path / "state", *args) as server:
        server.wait_ready()
        ids = [server.post_image(image, seed=s).json()["id"] for s in seeds]
        server.wait_for(lambda: all(server.status(i) == "completed" for i in ids), 120, what="every job")
        served = [served_outputs(server, i)[0] for i in ids]
    assert server.proc.returncode == 128 + signal.SIGTERM, server.output()
    config = RunConfig.from_options(model="synthetic", latent_shape=(1, 4, 2, 8, 8), total_steps=8)
    plan = partition_steps(8, 1)
    model = build_stage_model(config, plan, 0, torch.device("cpu"))
    for seed, latents in zip(seeds, served, strict=True):
        spec = SampleSpec(
            index=0, image="builtin", seed=seed, fps=6, motion_bucket_id=127, noise_aug_strength=0.02, name="x"
        )
        assert torch.equal(latents, model.finalize(model.run_steps(model.prepare(0, spec), plan.ranges[0])).latents)
