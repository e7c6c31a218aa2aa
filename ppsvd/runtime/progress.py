"""Live progress: stages report to the store, one process shows every stage's progress.

Stages write "samples_done steps_done" under their own key, at most ten times a second (a
store write is ~0.1 ms; the compute loop never waits for the display), and their phase
("loading unet, vae, ...", "waiting for the other stages", "running") under another when it
changes. The showing process (the launcher when ppsvd starts the workers itself, rank 0 under
torchrun) polls those keys and shows them as --log-format says: Rich bars on a terminal; plain
lines every --progress-interval seconds otherwise (a cluster job's log file); or JSON lines on
stdout for machines. Each shows the phase with its elapsed time, and an ETA.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ppsvd.console import count, err
from ppsvd.planning.ranks import rank_work
from ppsvd.runtime.control import key

REPORT_EVERY_S = 0.1
PHASE_STARTING = "starting the process"
"""A stage that has published no phase yet: its process is starting (importing torch, joining)."""
PHASE_RUNNING = "running"
PHASE_WAITING = "waiting for the other stages"
LANE_TIMES_EVERY_S = 1.0
"""A service's lane is published at once when it moves, and at least this often for its time totals."""


class ProgressReporter:
    """Counts steps and samples; a daemon thread publishes them ten times a second.

    The compute loop only bumps integers: a store write is a network round trip (0.1-1 ms on a
    busy host), and on a stage whose sample takes 80 ms that alone would cost ~1% throughput.
    With lanes=True (a service) it also publishes its lane: the sample (and job) it computes and
    its last step, or that it waits (lane_key; read by ppsvd.serve's monitor).
    """

    def __init__(self, store: Any, run_id: str, stage: int, *, lanes: bool = False) -> None:
        self.store = store
        self.name = key(run_id, "progress", stage)
        self.phase_name = key(run_id, "phase", stage)
        self.plan_name = key(run_id, "planned-steps", stage)
        self.lane_name = lane_key(run_id, stage) if lanes else None
        self.samples = 0
        self.steps = 0
        self.current: tuple[int, str | None] | None = None
        """(index, job) of the sample being computed; None while waiting."""
        self.last_step: int | None = None
        # A service's lane also says how this stage spent its time since it started serving (a
        # page's utilisation, /metrics): seconds busy computing a sample, seconds waiting for one
        # (or for the next stage to take it), and seconds in its denoising steps alone.
        self.serving = False
        self.busy_s = 0.0
        self.wait_s = 0.0
        self.step_s = 0.0
        self._mark = 0.0
        """monotonic start of the current busy or waiting interval (once serving)."""
        self._step_mark = 0.0
        self._time_lock = threading.Lock()
        """The compute loop closes intervals while the publisher adds up the open one: a lock keeps
        each published total whole, so the totals never go back."""
        self._published: tuple[int, int] | None = None
        self._published_lane: tuple | None = None
        self._lane_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ppsvd-progress-{stage}", daemon=True)
        self._thread.start()

    def phase(self, text: str) -> None:
        """What this stage is doing while it does no steps ('loading unet, vae', ...), published now."""
        if text == PHASE_RUNNING and not self.serving:
            with self._time_lock:
                self.serving, self._mark = True, time.monotonic()  # from now on it waits or computes
        try:
            self.store.set(self.phase_name, text)
        except Exception:
            pass  # best effort, as the counts

    def planned(self, steps: range) -> None:
        """The steps this stage runs per sample, once the stages agreed on the split (--partition
        auto may move them from the even split the bars start with), published now."""
        try:
            self.store.set(self.plan_name, f"{steps.start} {steps.stop}")
        except Exception:
            pass  # best effort, as the counts

    def begin(self, index: int, job: str | None = None, prepared_s: float = 0.0) -> None:
        """The compute loop starts on a sample (a service's lane shows it, and its job).
        prepared_s: the sample's preparation (stage 0's image encode) that just ended: busy too."""
        now = time.monotonic()
        with self._time_lock:
            if self.serving:
                start = max(self._mark, now - prepared_s)
                self.wait_s += start - self._mark
                self._mark = start
            self._step_mark = now
            self.current, self.last_step = (index, job), None

    def step(self, step: int | None = None) -> None:
        now = time.monotonic()
        with self._time_lock:
            self.step_s += now - self._step_mark
            self._step_mark = now
            self.steps += 1
            self.last_step = step

    def computed(self) -> None:
        """The sample's compute is over; handing it on (a full queue: the next stage is slower) is waiting."""
        now = time.monotonic()
        with self._time_lock:
            if self.serving and self.current is not None:
                self.busy_s += now - self._mark
                self._mark = now
            self.current = None

    def sample_done(self) -> None:
        self.computed()
        self.samples += 1

    def close(self) -> None:
        """Publish the final counts and stop the thread."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._publish()

    def _run(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            self._publish()

    def _publish(self) -> None:
        current = (self.samples, self.steps)
        if self.lane_name is not None:
            self._publish_lane()
        if current == self._published:
            return
        try:
            self.store.set(self.name, f"{current[0]} {current[1]}")
            self._published = current
        except Exception:
            pass  # progress is best effort; the control watcher reports a lost store

    def _publish_lane(self) -> None:
        now = time.monotonic()
        with self._time_lock:
            working, step, serving = self.current, self.last_step, self.serving
            open_s = now - self._mark if serving else 0.0
            busy_s = self.busy_s + (open_s if working is not None else 0.0)
            wait_s = self.wait_s + (open_s if working is None else 0.0)
            steps, step_s = self.steps, self.step_s
        lane = (working, step, self.samples, serving)
        # A visible change at once; the time totals alone (an idle or a long step) once a second.
        if lane == self._published_lane and now - self._lane_at < LANE_TIMES_EVERY_S:
            return
        state = "loading" if not serving else "waiting" if working is None else "busy"
        record = {
            "state": state,
            "index": None if working is None else working[0],
            "job": None if working is None else working[1],
            "step": step if working is not None else None,
            "samples": self.samples,
            "busy_s": round(busy_s, 6),
            "wait_s": round(wait_s, 6),
            "steps": steps,
            "step_s": round(step_s, 6),
            "t": time.time(),
        }
        try:
            self.store.set(self.lane_name, json.dumps(record))
            self._published_lane, self._lane_at = lane, now
        except Exception:
            pass  # best effort, as the counts


def lane_key(run_id: str, stage: int) -> str:
    """Where a service's stage (its rank) publishes its lane: JSON with state (loading, busy or
    waiting), index, job, step (the last one it finished), samples (done so far), since it serves
    busy_s, wait_s, steps and step_s (seconds in its denoising steps), and t (when published)."""
    return key(run_id, "lane", stage)


@dataclass
class StageProgress:
    """What the showing process knows about one stage."""

    label: str
    total_steps: int
    """Steps this stage runs over the whole run (its steps per sample x its samples)."""
    total_samples: int
    steps: int = 0
    samples: int = 0
    phase: str = PHASE_STARTING
    phase_since: float = field(default_factory=time.monotonic)
    planned: bool = False
    """The stage published the steps it runs (after the split was agreed): label and total are final."""

    def plan(self, steps: range) -> None:
        self.planned = True
        self.total_steps = len(steps) * self.total_samples
        self.label = f"{self.label.split(' · ')[0]} · steps {steps.start}-{steps.stop - 1}"

    def status(self, now: float) -> str:
        """'' while running (the bar says it all), else the phase and how long it has lasted."""
        if self.phase == PHASE_RUNNING or (self.total_steps and self.steps >= self.total_steps):
            return "done" if self.total_steps and self.steps >= self.total_steps else ""
        return f"{self.phase} ({now - self.phase_since:.0f} s)"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "label": self.label,
            "phase": "done" if self.total_steps and self.steps >= self.total_steps else self.phase,
            "phase_s": round(now - self.phase_since, 1),
            "steps": self.steps,
            "total_steps": self.total_steps,
            "samples": self.samples,
            "total_samples": self.total_samples,
        }


def _split_text(config, even_plan, style: str) -> str:
    """The split as the run starts: the even one, the sizes given, or 'by cost' until the stages agree."""
    partition = config.layout.partition
    if partition == "even":
        return even_plan.describe()
    if partition == "auto":
        shows = "each bar shows" if style == "rich" else "each stage's line shows"
        return f"by cost (--partition auto; {shows} its steps once agreed)"
    return partition.replace(",", "+")


def eta_seconds(done: int, total: int, working_s: float) -> float | None:
    """Seconds left at the rate so far (steps per second since the first step); None before that."""
    if done <= 0 or working_s <= 0 or total <= 0:
        return None
    return max(0.0, (total - done) * working_s / done)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class ProgressBoard:
    """Every stage's progress, polled from the store; shown as Rich bars, plain lines or JSON lines."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        rows: list[tuple[str, int, int]],
        *,
        title: str,
        style: str = "rich",
        interval_s: float = 10.0,
    ) -> None:
        """rows: one per process: (label, steps per sample, samples it will handle); style: rich, plain or json."""
        self.store = store
        self.run_id = run_id
        self.title = title
        self.style = style
        self.interval_s = interval_s
        self.stages = [StageProgress(label, steps * samples, samples) for label, steps, samples in rows]
        self.started = time.monotonic()
        self.first_step_at: float | None = None
        self._last_line = self.started
        self.progress = self._rich_progress() if style == "rich" else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rich_progress(self):

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps · {task.fields[samples]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[status]}"),
            console=err,
            transient=False,
        )
        self.tasks = [
            progress.add_task(
                st.label, total=st.total_steps, samples=f"0/{st.total_samples} samples", status=st.status(self.started)
            )
            for st in self.stages
        ]
        return progress

    @classmethod
    def for_run(cls, store: Any, run_id: str, config, indices: tuple[int, ...] | None = None) -> ProgressBoard:
        """The board of a run; indices: the samples it makes (a resumed run: those still missing)."""
        n, t = config.layout.nproc, config.job.total_steps
        todo = range(config.job.num_samples) if indices is None else tuple(indices)
        layout = config.layout_plan(n)
        style = progress_style(config)
        works = [rank_work(config.layout.strategy, n, k, todo, total_steps=t, layout=layout) for k in range(n)]
        rows = [
            (
                f"{w.label} · "
                + (f"all {t} steps" if len(w.steps) == t else f"steps {w.steps.start}-{w.steps.stop - 1}"),
                len(w.steps),
                len(w.samples),
            )
            for w in works
        ]
        samples = count(len(todo), "sample")
        if indices is not None:
            samples += f" (of {config.job.num_samples}; the others are kept)"
        if layout.kind == "data":
            title = f"[bold]ppsvd[/] data parallel: {samples} x {t} steps over {count(n, 'worker')} from one work queue"
        elif layout.kind != "pipeline":
            title = (
                f"[bold]ppsvd[/] {layout.kind}: {samples} x {t} steps over {layout.describe()}, split "
                f"{works[0].plan.describe()}"
            )
        else:
            title = (
                f"[bold]ppsvd[/] pipeline: {samples} x {t} steps over {count(n, 'stage')}, split "
                f"{_split_text(config, works[0].plan, style)}"
            )
        if not config.model.is_synthetic:
            # diffusers' pipe() conditions on fps=7 by default, the benchmark (and ppsvd) on 6.
            fps = config.svd.fps
            title += f"; fps {fps}" + (" (the benchmark's default; diffusers' pipe() uses 7)" if fps == 6 else "")
        return cls(store, run_id, rows, title=title, style=style, interval_s=config.ui.progress_interval_s)

    def __enter__(self) -> ProgressBoard:

        if self.progress is not None:
            self.progress.console.print(self.title)
            self.progress.start()
        elif self.style == "json":
            self._emit({"event": "start", "title": _plain(self.title), "stages": [st.label for st in self.stages]})
        else:
            err.print(_plain(self.title), markup=False, highlight=False, soft_wrap=True)
        self._thread = threading.Thread(target=self._poll, name="ppsvd-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.refresh()
        if self.progress is not None:
            self.progress.stop()
        else:
            self.report()  # the final state, so a log always ends with where every stage got to

    def _poll(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            self.refresh()
            if self.progress is None and time.monotonic() - self._last_line >= self.interval_s:
                self.report()

    def refresh(self) -> None:
        now = time.monotonic()
        for stage, st in enumerate(self.stages):
            try:
                names = [key(self.run_id, "progress", stage), key(self.run_id, "phase", stage)]
                if self.store.check(names[1:]):
                    phase = self.store.get(names[1]).decode()
                    if phase != st.phase:
                        st.phase, st.phase_since = phase, now
                if self.store.check(names[:1]):
                    st.samples, st.steps = (int(v) for v in self.store.get(names[0]).decode().split())
                if not st.planned and self.store.check([key(self.run_id, "planned-steps", stage)]):
                    start, stop = (
                        int(v) for v in self.store.get(key(self.run_id, "planned-steps", stage)).decode().split()
                    )
                    st.plan(range(start, stop))
                    if self.progress is not None:
                        self.progress.update(self.tasks[stage], total=st.total_steps, description=st.label)
            except Exception:
                return
            if st.steps and self.first_step_at is None:
                self.first_step_at = now
            if self.progress is not None:
                self.progress.update(
                    self.tasks[stage],
                    completed=st.steps,
                    samples=f"{st.samples}/{st.total_samples} samples",
                    status=st.status(now),
                )

    def eta_s(self, now: float | None = None) -> float | None:
        """The run's time left: all stages' remaining steps at the rate since the first step."""
        now = time.monotonic() if now is None else now
        if self.first_step_at is None:
            return None
        done = sum(st.steps for st in self.stages)
        return eta_seconds(done, sum(st.total_steps for st in self.stages), now - self.first_step_at)

    def line(self, now: float | None = None) -> str:
        """One plain progress line: elapsed, each stage's steps/samples or phase, the ETA."""
        now = time.monotonic() if now is None else now
        parts = []
        for st in self.stages:
            status = st.status(now)
            counts = f"{st.steps}/{st.total_steps} steps, {st.samples}/{st.total_samples} samples"
            parts.append(
                f"{st.label.split(' · ')[0]}: " + (f"{status}, {counts}" if status and status != "done" else counts)
            )
        return (
            f"ppsvd: progress {now - self.started:.1f} s · "
            + " · ".join(parts)
            + f" · ETA {_duration(self.eta_s(now))}"
        )

    def report(self) -> None:
        """Write one progress line now (plain or json style)."""
        now = time.monotonic()
        self._last_line = now
        if self.style == "json":
            eta = self.eta_s(now)
            self._emit(
                {
                    "event": "progress",
                    "elapsed_s": round(now - self.started, 1),
                    "eta_s": None if eta is None else round(eta, 1),
                    "stages": [st.to_json(now) for st in self.stages],
                }
            )
        else:
            err.print(self.line(now), markup=False, highlight=False, soft_wrap=True)

    @staticmethod
    def _emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), file=sys.stdout, flush=True)


def progress_style(config) -> str:
    """config.log_format, with 'auto' resolved: Rich bars on a terminal, plain lines otherwise."""
    if config.ui.log_format != "auto":
        return config.ui.log_format

    return "rich" if err.is_terminal else "plain"


def _plain(markup: str) -> str:

    return Text.from_markup(markup).plain


def live_progress(store: Any, run_id: str, config, indices: tuple[int, ...] | None = None):
    """The per-stage bars as a context manager, or one that does nothing with --no-progress.
    indices: the samples the run makes (a resumed run: only those it lacks)."""

    if not config.ui.show_progress:
        return contextlib.nullcontext()
    return ProgressBoard.for_run(store, run_id, config, indices)
