"""What the service is doing now, in memory: its phase, one lane per worker, each running job's place.

The monitor (pipeline.py) writes it from the stages' lanes (runtime/progress.py) ten times a
second; the API reads it for a job's progress, stage and step, for /readyz, and for
GET /v1/service, the snapshot a page draws as one lane per worker: which job it computes, at
which step, or that it waits. Not durable: the job store is the record; this is the live view.
Every change bumps `version`, so a reader (server-sent events) can tell that something moved.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("starting", "loading", "ready", "restarting", "draining", "stopped", "failed")
"""starting: no workers yet; loading: workers start and load the model; ready: every stage serves;
restarting: the workers crashed and start again; draining: a signal came, the jobs in flight
finish; stopped / failed: the service is going down."""


LANE_TOTALS = ("busy_s", "waiting_s", "samples", "steps_done", "step_s")
"""A lane's counts and time totals, which a restart of the workers starts again from zero."""


@dataclass
class Lane:
    """One worker process (a rank): a pipeline stage, a data-parallel worker or a guidance half."""

    rank: int
    label: str
    """'stage 1', 'worker 2', 'r1 stage 0 uncond' (as the progress bars of `ppsvd run` say)."""
    steps: tuple[int, int] | None = None
    """[start, stop) of the global denoising steps it runs (known once the stages agreed on the split)."""
    state: str = "loading"
    """loading, waiting (for a sample), busy (computing one) or down (the workers restart)."""
    job: str | None = None
    step: int | None = None
    """The last global step it finished of its current job; None right after it took it."""
    samples: int = 0
    """Samples it finished since the workers started."""
    since: float = field(default_factory=time.time)
    """When the current state (and job) began."""
    busy_s: float = 0.0
    """Seconds it computed samples since the workers started (stage 0: its image encodes too)."""
    waiting_s: float = 0.0
    """Seconds it served but waited: for a sample, or for the next stage to take one."""
    steps_done: int = 0
    step_s: float = 0.0
    """Denoising steps it ran since the workers started, and the seconds they took."""


class ServiceState:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.phase = "starting"
        self.detail = ""
        self.generation = 0
        self.restarts = 0
        self.lanes: list[Lane] = []
        self.live: dict[str, dict[str, Any]] = {}
        """Running jobs: id -> {rank, stage, step, progress}."""
        self.earlier: dict[str, dict[str, float]] = {}
        """Per lane label, the time totals and counts of the generations before this one (a
        restart starts the workers' own counts again; /metrics' counters go on from these)."""
        self.version = 0
        self._lock = threading.Lock()

    def _changed(self) -> None:
        self.version += 1

    def set_phase(self, phase: str, detail: str = "") -> None:
        assert phase in PHASES, phase
        with self._lock:
            if (phase, detail) != (self.phase, self.detail):
                self.phase, self.detail = phase, detail
                self._changed()

    def new_generation(self, generation: int, labels: list[str]) -> None:
        with self._lock:
            for lane in self.lanes:
                carried = self.earlier.setdefault(lane.label, dict.fromkeys(LANE_TOTALS, 0.0))
                for name in LANE_TOTALS:
                    carried[name] += getattr(lane, name)
            self.generation = generation
            self.lanes = [Lane(rank, label) for rank, label in enumerate(labels)]
            self.live.clear()
            self._changed()

    def workers_down(self) -> None:
        with self._lock:
            now = time.time()
            for lane in self.lanes:
                lane.state, lane.job, lane.step, lane.since = "down", None, None, now
            self.live.clear()
            self._changed()

    def update_lane(self, rank: int, record: dict[str, Any], steps: tuple[int, int] | None) -> tuple[int, float]:
        """A rank's lane as it published it (runtime/progress.py); returns the denoising steps it
        ran since its last record and their seconds (the monitor's step-time histogram)."""
        with self._lock:
            if rank >= len(self.lanes):
                return 0, 0.0
            lane = self.lanes[rank]
            new_steps = max(0, int(record.get("steps", lane.steps_done)) - lane.steps_done)
            new_step_s = max(0.0, float(record.get("step_s", lane.step_s)) - lane.step_s)
            lane.steps_done += new_steps
            lane.step_s += new_step_s
            # Totals only grow (a record read twice, or out of order, never takes time back).
            lane.busy_s = max(lane.busy_s, float(record.get("busy_s", 0.0)))
            lane.waiting_s = max(lane.waiting_s, float(record.get("wait_s", 0.0)))
            state, job, step = record.get("state", "waiting"), record.get("job"), record.get("step")
            moved = (state, job, step, steps) != (lane.state, lane.job, lane.step, lane.steps)
            left = self.live.get(lane.job) if lane.job is not None and job != lane.job else None
            if left is not None and left.get("rank") == rank and steps is not None:
                # It finished this lane's steps (the reads are 0.1 s apart: its last ones may not
                # have been seen) and waits for the next stage, or is being written.
                left.update(step=steps[1] - 1, progress=min(99, int(100 * steps[1] / max(1, self.total_steps))))
            if (state, job) != (lane.state, lane.job):
                lane.since = time.time()
            lane.state, lane.job, lane.step, lane.steps = state, job, step, steps
            lane.samples = int(record.get("samples", lane.samples))
            if job is not None and state == "busy" and job in self.live:
                done = (step + 1) if step is not None else (steps[0] if steps else 0)
                self.live[job].update(
                    rank=rank,
                    stage=lane.label,
                    step=step,
                    progress=min(99, int(100 * done / max(1, self.total_steps))),
                )
            if moved:
                self._changed()
            return new_steps, new_step_s

    def totals(self) -> dict[str, dict[str, float]]:
        """Per lane label, busy_s, waiting_s, samples, steps_done and step_s since the service
        started, over every generation of the workers (/metrics)."""
        with self._lock:
            totals = {label: dict(values) for label, values in self.earlier.items()}
            for lane in self.lanes:
                mine = totals.setdefault(lane.label, dict.fromkeys(LANE_TOTALS, 0.0))
                for name in LANE_TOTALS:
                    mine[name] += getattr(lane, name)
            return totals

    def job_started(self, job_id: str) -> None:
        with self._lock:
            self.live[job_id] = {"rank": None, "stage": None, "step": None, "progress": 0}
            self._changed()

    def job_left(self, job_id: str) -> None:
        with self._lock:
            if self.live.pop(job_id, None) is not None:
                self._changed()

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            view = self.live.get(job_id)
            return dict(view) if view is not None else None

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def snapshot(self) -> dict[str, Any]:
        """GET /v1/service: the phase and every lane (what a page draws)."""
        with self._lock:
            return {
                "phase": self.phase,
                "detail": self.detail,
                "generation": self.generation,
                "restarts": self.restarts,
                "total_steps": self.total_steps,
                "lanes": [asdict(lane) for lane in self.lanes],
                "running": {job: dict(view) for job, view in self.live.items()},
                "version": self.version,
            }
