"""The workers behind the service: a supervisor keeps them running, a feeder gives them jobs, a
monitor hears what they did. All three are threads of the launcher process (the one that also
serves HTTP), never of a worker: a stuck stage cannot block the API.

- Supervisor: runs the workers with the elastic launcher (runtime/launch.run_workers) in its own
  thread, so the agent installs no signal handlers (torch skips them off the main thread) and the
  service decides what a signal means (drain). One launch is a generation with a fresh run id.
  When the workers crash (a stage raised, was killed, hung: runtime/control names it), the jobs
  they held go back to the queue (jobs.requeue) and a new generation starts; after
  config.max_restarts crashes in a row before every stage was ready, it gives up (`fatal`).
  Under torchrun (serve/torchrun.py) the workers are torchrun's ranks and the supervisor runs
  rank 0's own stage instead: one generation, which torchrun restarts after a crash.
- Feeder: waits for a replica's stage 0 to ask (runtime/jobfeed: serve/want/<t>), takes the
  oldest queued job (one transaction: in_progress) and answers with its spec; while draining it
  answers NONE_LEFT, and the end of stream flows through the stages as at the end of a run.
- Monitor: reads the stages' events in order (written / failed / dropped) and turns them into
  job states, and reads their lanes and ready marks into ServiceState ten times a second.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ppsvd.backends.hosts import host_key, read_host, this_host
from ppsvd.console import notice
from ppsvd.io.samples import SampleSpec
from ppsvd.planning.ranks import rank_work
from ppsvd.runtime.control import ABORT_KEY, key, kill_if_alive, new_run_id, read_abort
from ppsvd.runtime.jobfeed import NONE_LEFT, THUMBNAILS, own_connection, serve_key, spec_to_json
from ppsvd.runtime.launch import WorkersEnded, run_workers
from ppsvd.runtime.progress import lane_key
from ppsvd.runtime.worker import WorkerSpec
from ppsvd.serve.config import UPLOADS, ServeConfig
from ppsvd.serve.jobs import MAX_CRASHES, JobStore
from ppsvd.serve.metrics import ServiceMetrics
from ppsvd.serve.state import ServiceState
from ppsvd.serve.torchrun import RankZeroStage

POLL_S = 0.02
"""The monitor's pace for events (a completed job is in the job store within this of its files)."""
LANES_EVERY_S = 0.1
MISSING_EVENT_S = 2.0
"""An event counted but never written (its worker died between the two store calls) is skipped after this."""
CLEAR_AFTER_S = 2.0
"""Once a generation is stopping (its abort key is set), a worker still alive after this is SIGKILLed.
The workers ignore SIGTERM (a service drains through its launcher), so the elastic agent's SIGTERM
would only end one stuck in C code (a gloo rendezvous with a dead peer) after its 30 s grace."""


@dataclass
class Generation:
    """One launch of the workers."""

    index: int
    run_id: str
    labels: list[str]
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    over: threading.Event = field(default_factory=threading.Event)
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    hosts: dict = field(default_factory=dict)
    """rank -> its HostFacts (pid and start time), once it published them."""
    aborted_at: float | None = None
    """When the generation's abort key appeared (a stage failed, or the service stops it)."""
    cleared: bool = False


class Pipeline:
    def __init__(
        self,
        config: ServeConfig,
        jobs: JobStore,
        state: ServiceState,
        store,
        metrics: ServiceMetrics,
        torchrun: RankZeroStage | None = None,
    ) -> None:
        self.config = config
        self.torchrun = torchrun
        """Under torchrun: rank 0's own stage, and the workers are torchrun's ranks (serve/torchrun.py);
        one generation, which torchrun (not this supervisor) restarts."""
        self.jobs = jobs
        self.state = state
        self.store = store
        self.metrics = metrics
        self.draining = threading.Event()
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.job_added = threading.Event()
        self.fatal: str | None = None
        self.gen: Generation | None = None
        self.in_flight: dict[str, int] = {}
        """Jobs handed to the current generation's workers and not yet back: id -> sample index."""
        self.cancelled: set[str] = set()
        """Deleted jobs still in flight: their sample leaves at a stage boundary, their files go when it does."""
        self.drained = 0
        """Jobs that finished while the service drained."""
        self.completions: deque[float] = deque(maxlen=50)
        self._lock = threading.Lock()
        self._next_index = 0
        self._here = this_host()
        self._thread = threading.Thread(target=self._supervise, name="ppsvd-supervisor", daemon=True)

    # -- what the service asks ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def drain(self) -> None:
        """Stop giving out jobs; the ones in flight finish; the workers leave once their stream ends."""
        self.draining.set()
        self.job_added.set()
        gen = self.gen
        with self._lock:
            idle = not self.in_flight
        if gen is not None and not gen.ready and idle:
            self.stop("the service is stopping before its workers were ready")

    def stop(self, reason: str) -> None:
        """Stop the workers now (drain timeout, a second signal): every stage sees the abort key."""
        self.stopping.set()
        gen = self.gen
        if gen is not None:
            try:
                self.store.compare_set(key(gen.run_id, ABORT_KEY), "", f"\t{reason}")
            except Exception:
                pass

    def cancel(self, job_id: str) -> bool:
        """A deleted job that is in flight leaves the pipeline at the next stage boundary."""
        with self._lock:
            gen = self.gen
            if gen is None or job_id not in self.in_flight:
                return False
            self.cancelled.add(job_id)
        self.store.set(serve_key(gen.run_id, "cancel", job_id), "1")
        return True

    def in_flight_count(self) -> int:
        with self._lock:
            return len(self.in_flight)

    def seconds_per_job(self) -> float | None:
        """Recent time between completions (for Retry-After), None before two completions."""
        times = list(self.completions)
        if len(times) < 2:
            return None
        return (times[-1] - times[0]) / (len(times) - 1)

    # -- supervisor --------------------------------------------------------------------------------
    def _supervise(self) -> None:
        failures, index = 0, 0
        try:
            while not self.stopping.is_set() and not self.draining.is_set():
                gen = self._start_generation(index)
                ended = self._run(gen)
                crash = None if self.stopping.is_set() else _unasked_end(ended, self.draining.is_set())
                if crash is not None:
                    self.state.workers_down()
                    notice(f"serve: {crash}" + ("" if gen.ready else " (while the workers started)"))
                self._requeue(gen, crash)
                if crash is None or self.draining.is_set():
                    break
                if self.torchrun is not None:  # torchrun restarts every rank, this one too
                    self.fatal = self.torchrun.fatal(crash)
                    self.state.set_phase("failed", self.fatal)
                    break
                failures = 0 if gen.ready else failures + 1
                if failures >= self.config.max_restarts:
                    self.fatal = (
                        f"{crash}; the workers failed at start-up {failures} times in a row, so the service "
                        f"stopped (its queued jobs stay in {self.config.state_dir} for the next start)"
                    )
                    self.state.set_phase("failed", self.fatal)
                    break
                self.state.restarts += 1
                self.state.set_phase("restarting", crash)
                notice(f"serve: starting the workers again (restart {self.state.restarts})")
                index += 1
                if failures:
                    self.stopping.wait(min(10.0, float(failures)))  # a start-up crash: do not spin
        except Exception as exc:  # a bug here must not leave the service waiting for ever
            self.fatal = f"internal error in the service's supervisor: {type(exc).__name__}: {exc}"
        finally:
            self.finished.set()

    def _start_generation(self, index: int) -> Generation:

        run = self.config.run
        n = run.layout.nproc
        layout = run.layout_plan(n)
        labels = [
            rank_work(run.layout.strategy, n, r, (), total_steps=run.job.total_steps, layout=layout).label
            for r in range(n)
        ]
        run_id = new_run_id() if self.torchrun is None else self.torchrun.run_id
        gen = Generation(index=index, run_id=run_id, labels=labels)
        self.state.new_generation(index, labels)
        if index == 0:
            self.state.set_phase("loading", f"starting {n} worker(s) and loading {run.model.model}")
        with self._lock:
            self.gen = gen
        return gen

    def _run(self, gen: Generation) -> WorkersEnded:

        spec = WorkerSpec(
            config=self.config.run,
            run_id=gen.run_id,
            run_dir=str(self.config.outputs_dir),
            run_start=time.time(),
            store_host="127.0.0.1",
            store_port=self.store.port,
            serve=True,
        )
        helpers = [
            threading.Thread(target=self._feed, args=(gen,), name="ppsvd-feeder", daemon=True),
            threading.Thread(target=self._monitor, args=(gen,), name="ppsvd-monitor", daemon=True),
        ]
        for thread in helpers:
            thread.start()
        try:
            return run_workers(spec, self.store) if self.torchrun is None else self.torchrun.run()
        finally:
            gen.over.set()
            for thread in helpers:
                thread.join(timeout=10)

    def _requeue(self, gen: Generation, crash: str | None) -> None:
        with self._lock:
            held = list(self.in_flight)
            self.in_flight.clear()
            self.cancelled.clear()
        if not held:
            return
        requeued, failed = self.jobs.requeue(held, crash=crash)
        for job_id in held:
            self.state.job_left(job_id)
        for _ in failed:
            self.metrics.job_failed()
        if crash is not None:
            more = f"; {len(failed)} failed for good (in flight during {MAX_CRASHES} crashes)" if failed else ""
            notice(f"serve: {len(requeued)} job(s) the workers held go back to the queue{more}")

    # -- feeder ----------------------------------------------------------------------------------
    def _feed(self, gen: Generation) -> None:
        from torch.distributed import DistStoreError  # heavy: torch

        conn = own_connection(self.store, self.config.run.transport.timeout_s)
        ticket = 1
        while not gen.over.is_set():
            try:
                conn.wait([serve_key(gen.run_id, "want", ticket)], timedelta(seconds=0.2))
            except DistStoreError:
                continue
            answer = serve_key(gen.run_id, "ticket", ticket)
            while True:
                if self.draining.is_set() or gen.over.is_set():
                    conn.set(answer, NONE_LEFT)
                    break
                job = self.jobs.claim_next()
                if job is not None:
                    spec = self._spec(job)
                    with self._lock:
                        self.in_flight[job.id] = spec.index
                    self.state.job_started(job.id)
                    conn.set(answer, spec_to_json(spec))
                    break
                self.job_added.wait(0.2)
                self.job_added.clear()
            ticket += 1

    def _spec(self, job) -> SampleSpec:
        p = job.params
        index, self._next_index = self._next_index, self._next_index + 1
        return SampleSpec(
            index=index,  # increasing in the order stage 0s take jobs, never reused while the service runs
            # Relative to the outputs (the workers' run directory): a rank on another host finds it
            # in the state dir as it sees it (runtime/jobfeed.JobFeed resolves it).
            image=str(Path("..") / UPLOADS / job.image),
            seed=int(p["seed"]),
            fps=int(p["fps"]),
            motion_bucket_id=int(p["motion_bucket_id"]),
            noise_aug_strength=float(p["noise_aug_strength"]),
            name=job.id,
            min_guidance_scale=float(p["min_guidance_scale"]),
            max_guidance_scale=float(p["max_guidance_scale"]),
            job=job.id,
        )

    # -- monitor ---------------------------------------------------------------------------------
    def _monitor(self, gen: Generation) -> None:
        conn = own_connection(self.store, self.config.run.transport.timeout_s)
        seen, missing_since, lanes_at = 0, None, 0.0
        while True:
            over = gen.over.is_set()
            count = int(conn.add(serve_key(gen.run_id, "events"), 0))
            while seen < count:
                name = serve_key(gen.run_id, "event", seen + 1)
                if not conn.check([name]):
                    missing_since = missing_since or time.monotonic()
                    if over or time.monotonic() - missing_since > MISSING_EVENT_S:
                        seen, missing_since = seen + 1, None
                        continue
                    break
                missing_since = None
                event = json.loads(conn.get(name))
                conn.delete_key(name)
                seen += 1
                self._handle(gen, conn, event)
            if over:
                return
            if time.monotonic() - lanes_at >= LANES_EVERY_S:
                lanes_at = time.monotonic()
                self._read_lanes(gen, conn)
                self._watch_workers(gen, conn)
            time.sleep(POLL_S)

    def _handle(self, gen: Generation, conn, event: dict) -> None:
        kind, job_id = event.get("kind"), str(event.get("job"))
        with self._lock:
            self.in_flight.pop(job_id, None)
            was_cancelled = job_id in self.cancelled
            self.cancelled.discard(job_id)
        self.state.job_left(job_id)
        if was_cancelled:
            conn.delete_key(serve_key(gen.run_id, "cancel", job_id))
        if self.draining.is_set() and kind == "written":
            self.drained += 1
        if kind == "written":
            files = {name: rel for name, rel in (event.get("files") or {}).items() if rel}
            outputs = self.config.outputs_dir
            if not all((outputs / rel).is_file() for rel in files.values()):
                if self.jobs.fail(
                    job_id, "output_lost", "the job's files vanished from the state dir after they were written"
                ):
                    self.metrics.job_failed()
                return
            if self.jobs.complete(job_id, files, event.get("timings") or {}):
                self.completions.append(time.time())
                job = self.jobs.get(job_id)
                if job is not None:
                    self.metrics.job_completed(job)
            elif self.jobs.get(job_id) is None:  # deleted while its last stage wrote it
                remove_outputs(outputs, job_id)
        elif kind == "failed":
            if self.jobs.fail(job_id, "job_failed", str(event.get("message"))):
                self.metrics.job_failed()

    def _read_lanes(self, gen: Generation, conn) -> None:
        n = len(gen.labels)
        if not gen.ready:
            marks = [serve_key(gen.run_id, "ready", r) for r in range(n)]
            if all(conn.check([m]) for m in marks):
                gen.ready = True
                seconds = time.monotonic() - gen.started
                if not self.draining.is_set():
                    self.state.set_phase("ready", f"{n} worker(s) serving {self.config.run.model.model}")
                notice(f"serve: ready: {n} worker(s) loaded and serving in {seconds:.1f} s")
        for rank in range(n):
            if rank not in gen.ranges:
                planned = key(gen.run_id, "planned-steps", rank)
                if conn.check([planned]):
                    start, stop = (int(v) for v in conn.get(planned).decode().split())
                    gen.ranges[rank] = (start, stop)
                elif gen.ready and self.config.run.layout_plan(n).stages == 1:
                    gen.ranges[rank] = (0, self.config.run.job.total_steps)  # data-parallel workers: all steps
            name = lane_key(gen.run_id, rank)
            if conn.check([name]):
                steps, seconds = self.state.update_lane(rank, json.loads(conn.get(name)), gen.ranges.get(rank))
                self.metrics.steps_done(gen.labels[rank], steps, seconds)

    def _blame_dead(self, gen: Generation, conn, here) -> bool:
        """A worker of this host whose process is gone without finishing: the generation's abort key
        names it (True). A rank on another host (torchrun) is watched by its own agent and peers."""
        for rank, facts in list(gen.hosts.items()):
            if facts.shares_processes(here) and not facts.alive() and not conn.check([key(gen.run_id, "done", rank)]):
                conn.compare_set(key(gen.run_id, ABORT_KEY), "", f"{rank}\tits process ended before it finished")
                return True
        return False

    def blame_dead_peer(self) -> bool:
        """Under torchrun, when a signal comes: if a rank of this host died, the signal is torchrun
        stopping the others because of it (a crash: the jobs go back to the queue, rank 0 exits 1
        naming that stage), not a request to drain. True when one did (its abort key is set)."""
        gen = self.gen
        if gen is None:
            return False
        for rank in range(len(gen.labels)):  # the monitor may not have read every rank's facts yet
            if rank not in gen.hosts and self.store.check([host_key(gen.run_id, rank)]):
                facts = read_host(self.store, gen.run_id, rank)
                if facts is not None:
                    gen.hosts[rank] = facts
        return self._blame_dead(gen, self.store, self._here)

    def _watch_workers(self, gen: Generation, conn) -> None:
        """A worker process that is gone without finishing stops the generation at once (its
        peers would notice within seconds; a restart should not wait for that), and once the
        generation stops, no worker of it outlives CLEAR_AFTER_S."""

        n = len(gen.labels)
        here = self._here
        for rank in range(n):
            if rank not in gen.hosts:
                facts = read_host(conn, gen.run_id, rank) if conn.check([host_key(gen.run_id, rank)]) else None
                if facts is not None:
                    gen.hosts[rank] = facts
        if gen.aborted_at is None:
            if read_abort(conn, gen.run_id) is not None or self._blame_dead(gen, conn, here):
                gen.aborted_at = time.monotonic()
        elif not gen.cleared and time.monotonic() - gen.aborted_at > CLEAR_AFTER_S:
            gen.cleared = True
            for rank in range(n):
                kill_if_alive(conn, gen.run_id, rank, grace_s=0)


def remove_outputs(outputs: Path, job_id: str) -> None:
    """A deleted job's files under outputs/ (whatever of them exist)."""

    for folder, suffix in (("latents", ".safetensors"), ("videos", ".mp4"), (THUMBNAILS, ".png")):
        (Path(outputs) / folder / f"{job_id}{suffix}").unlink(missing_ok=True)


def retry_after(seconds: float | None) -> str:
    return str(max(1, math.ceil(seconds))) if seconds else "5"


def _unasked_end(ended: WorkersEnded, draining: bool) -> str | None:
    """Why the workers ended when the service did not stop them, or None when they ended as asked
    (a drain). An end no one asked for counts as a crash, so the supervisor restarts them rather
    than leave a service that accepts jobs no worker will run."""
    if ended.error is not None:
        return ended.error
    if ended.signum is not None:
        return f"the workers were stopped by signal {signal.Signals(ended.signum).name}"
    if not draining:
        return "the workers exited although the service did not ask them to stop"
    return None
