"""GET /metrics: the service in Prometheus' terms (prometheus-client), one registry per server.

Two kinds of numbers. Events the service sees once (a job accepted, finished, cancelled; a
job's latency; a stage's steps) are prometheus-client metrics updated where they happen. What
already lives elsewhere (jobs by status in the job store; the phase, the restarts and each
lane's time totals in ServiceState) is read when Prometheus scrapes, by a collector, so each
fact stays in one place. Names follow Prometheus' conventions: the ppsvd_ prefix, base units
(_seconds), _total for counters; docs/serve.md lists them.

Lanes are labelled by their label ('stage 1', 'worker 0', 'r1 stage 0 uncond'), as the page and
`ppsvd run`'s progress bars name them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ppsvd.serve.jobs import STATUSES, Job, JobStore
from ppsvd.serve.state import PHASES, ServiceState

JOB_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""A job's latency: a tiny model on CPU takes a second or two, SVD-XT on one GPU a minute, a deep queue hours."""
INFO_LABELS = (
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
)
"""ppsvd_served_info's labels: what GET /v1/service's `served` says under these names."""
STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""One denoising step: milliseconds (synthetic, tiny) to seconds (SVD-XT 25 x 576x1024 with guidance)."""


class ServiceMetrics:
    """This server's metrics: its own registry (never prometheus-client's global one: two servers
    in one process, or the tests, would share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter(
            "ppsvd_jobs_submitted", "Jobs accepted (POST /v1/videos) since the server started", registry=r
        )
        self.finished = Counter(
            "ppsvd_jobs_finished",
            "Jobs that ended since the server started, by how: completed or failed",
            ["status"],
            registry=r,
        )
        self.cancelled = Counter(
            "ppsvd_jobs_cancelled", "Jobs deleted while queued or in progress since the server started", registry=r
        )
        self.queued_s = Histogram(
            "ppsvd_job_queued_seconds",
            "A completed job's wait in the queue: accepted -> its replica's stage 0 took it",
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self.running_s = Histogram(
            "ppsvd_job_running_seconds",
            "A completed job's time in the pipeline: stage 0 took it -> its files were written",
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self.latency_s = Histogram(
            "ppsvd_job_latency_seconds",
            "A completed job's whole time: accepted -> its files were written (queued + running)",
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self.step_s = Histogram(
            "ppsvd_stage_step_seconds",
            "One denoising step on a lane (observed as the mean of the steps in each 0.1 s the monitor reads; "
            "_sum and _count are exact)",
            ["lane"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        for status in ("completed", "failed"):
            self.finished.labels(status)  # both series exist (at 0) from the start

    def watch(self, jobs: JobStore, state: ServiceState, serving: dict[str, Any]) -> None:
        """Read the job store and the live state at each scrape (see _Snapshot); `serving` is what
        GET /v1/service says the server makes (ppsvd_served_info's labels)."""
        info = {name: str(serving[name]) for name in INFO_LABELS}
        self.registry.register(_Snapshot(jobs, state, info))

    def job_completed(self, job: Job) -> None:
        self.finished.labels("completed").inc()
        written = (job.timings or {}).get("written") or job.completed_at
        if job.started_at is not None:
            self.queued_s.observe(max(0.0, job.started_at - job.created_at))
            if written is not None:
                self.running_s.observe(max(0.0, written - job.started_at))
        if written is not None:
            self.latency_s.observe(max(0.0, written - job.created_at))

    def job_failed(self) -> None:
        self.finished.labels("failed").inc()

    def steps_done(self, lane: str, count: int, seconds: float) -> None:
        """`count` steps that together took `seconds` on a lane (each observed at their mean)."""
        if count > 0:
            mean = seconds / count
            child = self.step_s.labels(lane)
            for _ in range(count):
                child.observe(mean)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus' text format, or OpenMetrics when the scraper asks) and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _Snapshot:
    """A collector: what the job store and ServiceState hold, read when Prometheus scrapes."""

    def __init__(self, jobs: JobStore, state: ServiceState, served: dict[str, str]) -> None:
        self.jobs = jobs
        self.state = state
        self.served = served

    def collect(self) -> Iterator[Metric]:
        counts = self.jobs.counts()
        by_status = GaugeMetricFamily("ppsvd_jobs", "Jobs in the job store by status", labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("ppsvd_queue_depth", "Jobs waiting for a free stage 0", value=counts.get("queued", 0))

        snapshot = self.state.snapshot()
        phase = GaugeMetricFamily(
            "ppsvd_service_phase", "1 for the phase the service is in (ready: every stage serves)", labels=["phase"]
        )
        for name in PHASES:
            phase.add_metric([name], 1.0 if snapshot["phase"] == name else 0.0)
        yield phase
        yield CounterMetricFamily(
            "ppsvd_worker_restarts", "Times the workers crashed and were started again", value=snapshot["restarts"]
        )
        yield InfoMetricFamily("ppsvd_served", "What this server makes (fixed at start)", value=self.served)

        busy = GaugeMetricFamily(
            "ppsvd_stage_busy", "1 while a lane computes a sample, 0 while it waits (or loads)", labels=["lane"]
        )
        for lane in snapshot["lanes"]:
            busy.add_metric([lane["label"]], 1.0 if lane["state"] == "busy" else 0.0)
        yield busy
        totals = self.state.totals()
        families: list[tuple[str, str, str, Any]] = [
            (
                "ppsvd_stage_busy_seconds",
                "Seconds a lane computed samples (stage 0: with their image encode; the last stage: with the decode)",
                "busy_s",
                float,
            ),
            (
                "ppsvd_stage_waiting_seconds",
                "Seconds a lane served but waited: for a sample (fill, an idle queue, a slower stage before it) "
                "or for the next stage to take one",
                "waiting_s",
                float,
            ),
            ("ppsvd_samples_completed", "Samples a lane finished (computed and handed on or written)", "samples", int),
        ]
        for name, documentation, field, kind in families:
            family = CounterMetricFamily(name, documentation, labels=["lane"])
            for label, values in totals.items():
                family.add_metric([label], kind(values[field]))
            yield family
