"""GET /metrics: scraped during a 20-job run of a real `ppsvd serve` and parsed with
prometheus-client's own parsers; and the parts behind it (the stages' time accounting, the
live state's totals across restarts, the exposition's names) without processes."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_helpers import Server, png_bytes

KEY = "metrics-test-key-0123456789"
JOBS = 20


def samples(text: str, parse=text_string_to_metric_families) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of an exposition, through prometheus-client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parse(text)
        for sample in family.samples
    }


def value(scrape: dict, name: str, **labels) -> float:
    return scrape[(name, frozenset(labels.items()))]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_metrics_move_during_a_20_job_run_and_parse(tmp_path):
    args = ("--model-id", "synthetic", "--device", "cpu", "--latent-shape", "1", "4", "2", "8", "8")
    args += ("--nproc", "2", "--total-steps", "8", "--step-ms", "30", "--transport", "zmq")
    with Server(tmp_path / "state", *args, api_key=KEY) as server:
        server.wait_ready()
        started = time.time()
        anonymous = httpx.get(f"{server.url}/metrics", timeout=10)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
        before = server.get("/metrics")
        assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
        lanes = server.get("/v1/service").json()["lanes"]
        steps = {lane["label"]: lane["steps"][1] - lane["steps"][0] for lane in lanes}
        assert sorted(steps) == ["stage 0", "stage 1"] and sum(steps.values()) == 8

        image = png_bytes(64, 64)
        posted = [server.post_image(image, seed=k) for k in range(JOBS)]
        assert [r.status_code for r in posted] == [200] * JOBS
        ids = [r.json()["id"] for r in posted]
        scrapes = []
        while True:  # what a Prometheus scraping every 0.1 s sees
            scrapes.append(samples(server.get("/metrics").text))
            if value(scrapes[-1], "ppsvd_jobs", status="completed") == JOBS:
                break
            assert time.time() - started < 120, server.output()
            time.sleep(0.1)
        # The stages' last lane records reach the monitor within 0.1 s of their last step.
        last = server.wait_for(
            lambda: (lambda s: s if value(s, "ppsvd_samples_completed_total", lane="stage 1") == JOBS else None)(
                samples(server.get("/metrics").text)
            ),
            10,
            what="every sample counted",
        )
        elapsed = time.time() - started
        as_openmetrics = httpx.get(
            f"{server.url}/metrics",
            headers={**server.headers, "Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=10,
        )
        assert as_openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert samples(as_openmetrics.text, openmetrics_families)  # parses as OpenMetrics too
        # The page's stream: the service's view, then the latest jobs, each once (oldest first).
        events = []
        with httpx.stream("GET", f"{server.url}/v1/service/events", headers=server.headers, timeout=10) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if len(events) == 1 + JOBS:
                        break
        assert events[0][0] == "service" and events[0][1]["phase"] == "ready" and events[0][1]["queued"] == 0
        assert [e[1]["id"] for e in events[1:]] == ids and {e[0] for e in events[1:]} == {"video"}
        assert all(e[1]["status"] == "completed" and e[1]["timings"]["written"] for e in events[1:])
        assert events[1][1]["variants"] == ["latents"]  # the synthetic model writes no video

    # The counters moved while the jobs ran: a scrape saw some done and some not.
    completed = [value(s, "ppsvd_jobs_finished_total", status="completed") for s in scrapes]
    assert completed == sorted(completed) and completed[-1] == JOBS
    assert any(0 < c < JOBS for c in completed), completed
    depth = [value(s, "ppsvd_queue_depth") for s in scrapes]
    assert max(depth) > 0 and depth[-1] == 0
    for lane in steps:
        busy = [value(s, "ppsvd_stage_busy_seconds_total", lane=lane) for s in scrapes + [last]]
        done = [value(s, "ppsvd_samples_completed_total", lane=lane) for s in scrapes + [last]]
        assert busy == sorted(busy) and busy[-1] > busy[0] and done == sorted(done), (lane, busy, done)

    # At the end: every count exact, the sums consistent.
    assert value(last, "ppsvd_jobs_submitted_total") == JOBS
    assert value(last, "ppsvd_jobs", status="completed") == JOBS and value(last, "ppsvd_jobs", status="queued") == 0
    assert value(last, "ppsvd_jobs_finished_total", status="failed") == 0
    for name in ("ppsvd_job_queued_seconds", "ppsvd_job_running_seconds", "ppsvd_job_latency_seconds"):
        assert value(last, f"{name}_count") == JOBS
        assert value(last, f"{name}_bucket", le="+Inf") == JOBS
    queued, running = value(last, "ppsvd_job_queued_seconds_sum"), value(last, "ppsvd_job_running_seconds_sum")
    assert value(last, "ppsvd_job_latency_seconds_sum") == pytest.approx(queued + running, rel=1e-9)
    assert queued > 0 and running > JOBS * 8 * 0.030  # each job's 8 steps of 30 ms at least
    for lane, n in steps.items():
        count = value(last, "ppsvd_stage_step_seconds_count", lane=lane)
        step_sum = value(last, "ppsvd_stage_step_seconds_sum", lane=lane)
        assert count == JOBS * n, (lane, count)
        assert 0.029 <= step_sum / count < 1.0, (lane, step_sum / count)  # --step-ms 30
        busy = value(last, "ppsvd_stage_busy_seconds_total", lane=lane)
        waiting = value(last, "ppsvd_stage_waiting_seconds_total", lane=lane)
        assert step_sum <= busy * 1.001 and busy + waiting <= elapsed + 1.0, (lane, step_sum, busy, waiting)
        assert value(last, "ppsvd_samples_completed_total", lane=lane) == JOBS
    assert value(last, "ppsvd_worker_restarts_total") == 0
    assert (
        value(last, "ppsvd_service_phase", phase="ready") == 1
        and value(last, "ppsvd_service_phase", phase="loading") == 0
    )
    (info,) = [labels for (name, labels) in last if name == "ppsvd_served_info"]
    assert {"model": "synthetic", "layout": "2 stages", "size": "64x64", "transport": "zmq"}.items() <= dict(
        info
    ).items()


def test_metric_names_follow_prometheus_conventions(tmp_path):
    """Every family has the ppsvd_ prefix and help text; durations are _seconds; counters' samples
    end in _total; the registry is the server's own (two servers count apart)."""
    from prometheus_client import REGISTRY

    from ppsvd.serve.jobs import JobStore
    from ppsvd.serve.metrics import ServiceMetrics
    from ppsvd.serve.state import ServiceState

    serving = dict.fromkeys(
        (
            "model",
            "size",
            "num_frames",
            "num_inference_steps",
            "layout",
            "strategy",
            "nproc",
            "partition",
            "transport",
            "device",
            "dtype",
        ),
        "x",
    )
    one, two = ServiceMetrics(), ServiceMetrics()
    state = ServiceState(8)
    state.new_generation(0, ["stage 0", "stage 1"])
    one.watch(JobStore(tmp_path / "a.sqlite3"), state, serving)
    two.watch(JobStore(tmp_path / "b.sqlite3"), ServiceState(8), serving)
    one.submitted.inc()
    one.steps_done("stage 0", 4, 0.2)
    body, content_type = one.render(None)
    assert content_type.startswith("text/plain")
    families = list(text_string_to_metric_families(body.decode()))
    names = {family.name: family for family in families}
    assert all(name.startswith("ppsvd_") and names[name].documentation for name in names)
    for family in families:
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
    wanted = {
        "ppsvd_jobs",
        "ppsvd_queue_depth",
        "ppsvd_jobs_submitted",
        "ppsvd_jobs_finished",
        "ppsvd_jobs_cancelled",
        "ppsvd_job_queued_seconds",
        "ppsvd_job_running_seconds",
        "ppsvd_job_latency_seconds",
        "ppsvd_stage_busy_seconds",
        "ppsvd_stage_waiting_seconds",
        "ppsvd_stage_step_seconds",
        "ppsvd_samples_completed",
        "ppsvd_worker_restarts",
        "ppsvd_service_phase",
        "ppsvd_stage_busy",
        "ppsvd_served_info",
    }
    assert wanted <= set(names), wanted - set(names)
    mine = samples(body.decode())
    assert value(mine, "ppsvd_stage_step_seconds_count", lane="stage 0") == 4
    assert value(mine, "ppsvd_stage_step_seconds_sum", lane="stage 0") == pytest.approx(0.2)
    assert value(mine, "ppsvd_jobs_submitted_total") == 1
    assert value(samples(two.render(None)[0].decode()), "ppsvd_jobs_submitted_total") == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("ppsvd_")]  # not the global registry


def test_lane_totals_go_on_across_restarts_and_never_go_back():
    from ppsvd.serve.state import ServiceState

    state = ServiceState(8)
    state.new_generation(0, ["stage 0", "stage 1"])
    state.job_started("video_a")
    record = {"state": "busy", "job": "video_a", "step": 1, "samples": 0, "busy_s": 1.0, "wait_s": 2.0}
    assert state.update_lane(0, {**record, "steps": 2, "step_s": 0.5}, (0, 4)) == (2, 0.5)
    assert state.update_lane(0, {**record, "steps": 2, "step_s": 0.5}, (0, 4)) == (0, 0.0)  # read twice: nothing new
    assert state.job_view("video_a")["progress"] == 25
    # The lane moves on before its last steps were read: the job's place is its last step there.
    moved = {"state": "waiting", "job": None, "step": None, "samples": 1, "busy_s": 1.5, "wait_s": 2.0}
    assert state.update_lane(0, {**moved, "steps": 4, "step_s": 1.0}, (0, 4)) == (2, 0.5)
    assert state.job_view("video_a")["step"] == 3 and state.job_view("video_a")["progress"] == 50
    # An older record (out of order) never takes time back.
    state.update_lane(0, {**moved, "busy_s": 1.2, "wait_s": 1.0, "steps": 4, "step_s": 1.0}, (0, 4))
    assert state.totals()["stage 0"]["busy_s"] == 1.5 and state.totals()["stage 0"]["waiting_s"] == 2.0
    # A restart: new workers count from zero; the totals go on from the last generation's.
    state.new_generation(1, ["stage 0", "stage 1"])
    state.update_lane(0, {**moved, "samples": 2, "busy_s": 0.5, "wait_s": 0.25, "steps": 4, "step_s": 0.75}, (0, 4))
    totals = state.totals()["stage 0"]
    assert totals == {"busy_s": 2.0, "waiting_s": 2.25, "samples": 3, "steps_done": 8, "step_s": 1.75}


def test_a_stage_reports_busy_waiting_and_step_seconds():
    """The stage's own accounting (runtime/progress.py): loading until it serves, then every
    second either busy or waiting, step seconds within busy ones, totals that only grow."""
    import json

    from ppsvd.runtime.progress import PHASE_RUNNING, ProgressReporter

    class Store:
        def __init__(self):
            self.values = {}

        def set(self, name, text):
            self.values[name] = text

    store = Store()
    reporter = ProgressReporter(store, "run", 0, lanes=True)
    try:
        reporter._publish_lane()
        lane_name = reporter.lane_name
        assert json.loads(store.values[lane_name])["state"] == "loading"
        t0 = time.monotonic()
        reporter.phase(PHASE_RUNNING)
        time.sleep(0.05)  # waiting for a sample
        reporter.begin(0, "video_a", prepared_s=0.01)  # its preparation counts as busy
        for step in range(2):
            time.sleep(0.03)
            reporter.step(step)
        time.sleep(0.02)
        reporter.computed()  # the hand-off to the next stage: waiting again
        time.sleep(0.02)
        reporter.sample_done()
        reporter._lane_at = 0.0
        reporter._publish_lane()
        elapsed = time.monotonic() - t0
        record = json.loads(store.values[lane_name])
    finally:
        reporter.close()
    assert record["state"] == "waiting" and record["samples"] == 1 and record["steps"] == 2
    assert 0.06 <= record["step_s"] <= record["busy_s"]
    assert record["busy_s"] >= 0.09 and record["wait_s"] >= 0.06
    assert record["busy_s"] + record["wait_s"] == pytest.approx(elapsed, abs=0.01)
