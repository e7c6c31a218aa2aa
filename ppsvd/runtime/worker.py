"""One worker process: join the world, load this stage's model, run the stage loop, report.

Entered two ways: `worker_main(spec)` when ppsvd started the workers itself (the elastic
launcher runs `python -m ppsvd.runtime.entry SPEC.json`, which calls it), or
`torchrun_main(config)` when the command already runs under torchrun. Both end in `_run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ppsvd import backends
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.config import RunConfig
from ppsvd.console import error_line, notice
from ppsvd.environment import software_versions
from ppsvd.errors import Cancelled, PartnerLinkError, PpsvdError
from ppsvd.io import given
from ppsvd.io.atomic import run_label, write_json_atomic
from ppsvd.io.results import JOURNAL, MANIFEST, ResultWriter, read_journal
from ppsvd.io.resume import sample_settings
from ppsvd.io.rundir import RunDirLock, create_run_dir
from ppsvd.planning.ranks import rank_work
from ppsvd.runtime.control import RunControl, describe, key, public_run_id, store_get
from ppsvd.runtime.jobfeed import Hops, JobFeed, drop_check, mark_serving, written_hook
from ppsvd.runtime.progress import PHASE_RUNNING, PHASE_WAITING, ProgressReporter, live_progress
from ppsvd.runtime.signals import STOP_SIGNALS, StopSignal, catch_stop_signals
from ppsvd.runtime.workqueue import WorkQueue

RUN_DIR_KEY = "run_dir"
WRITER_GRACE_S = 3.0
"""How long a stopping last stage lets the sample it is writing finish."""


@dataclass(frozen=True)
class WorkerSpec:
    """What the launcher hands every worker: JSON in a private file (runtime/entry.py), never a pickle."""

    config: RunConfig
    run_id: str
    run_dir: str
    run_start: float
    store_host: str
    store_port: int
    indices: tuple[int, ...] | None = None
    """The samples to generate (a resumed run: those not finished yet); None: all of them."""
    serve: bool = False
    """A service's workers (ppsvd serve): jobs stream in from the launcher's feeder until it drains
    (runtime/jobfeed.py), instead of a fixed list of samples."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_json()
        data["indices"] = None if self.indices is None else list(self.indices)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> WorkerSpec:
        indices = data.get("indices")
        return WorkerSpec(
            config=RunConfig.from_json(data["config"]),
            run_id=str(data["run_id"]),
            run_dir=str(data["run_dir"]),
            run_start=float(data["run_start"]),
            store_host=str(data["store_host"]),
            store_port=int(data["store_port"]),
            indices=None if indices is None else tuple(int(i) for i in indices),
            serve=bool(data.get("serve", False)),
        )

    def write(self, folder: Path) -> Path:
        """Write the spec into `folder` (the launcher's private 0700 directory); returns its path."""
        path = Path(folder) / "worker-spec.json"
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            json.dump(self.to_json(), handle)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> WorkerSpec:
        return WorkerSpec.from_json(json.loads(Path(path).read_text()))


def worker_main(spec: WorkerSpec, received: list[int]) -> int:
    """A worker started by ppsvd.runtime.launch (one per local rank; runtime/entry.py calls this
    once it caught the stop signals): returns its exit code."""
    if spec.serve:
        # A service drains through its launcher: Ctrl-C in a terminal, a closed terminal and a
        # service manager's SIGTERM (systemd signals every process of the unit) reach the whole
        # group, but only the launcher acts on them; the workers finish their stream. When a
        # stage fails the others leave through the control plane (runtime/control.py) within
        # seconds, not by the agent's SIGTERM; a killed launcher takes them along (PDEATHSIG).
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    try:
        return _start_worker(spec, received)
    except StopSignal as stop:  # before the stage loop started: nothing to clean up yet
        return 128 + stop.signum


def _start_worker(spec: WorkerSpec, received: list[int]) -> int:
    from torch.distributed import TCPStore  # heavy: torch

    store = TCPStore(
        spec.store_host,
        spec.store_port,
        is_master=False,
        timeout=timedelta(seconds=spec.config.transport.timeout_s),
        use_libuv=True,
    )
    return _run(
        spec.config,
        store,
        spec.run_id,
        Path(spec.run_dir),
        spec.run_start,
        self_launched=True,
        indices=spec.indices,
        received=received,
        serve=spec.serve,
    )


def torchrun_main(
    config: RunConfig,
    *,
    run_dir: Path | None = None,
    indices: tuple[int, ...] | None = None,
    received: list[int] | None = None,
) -> tuple[int, Path]:
    """Entry point when the command itself runs under torchrun: this process is one stage.

    run_dir and indices: a resumed run's directory and the samples still to generate.
    Returns the exit code and the run directory; the command prints the summary on rank 0."""
    launched = time.time()
    import torch.distributed as dist  # heavy: torch

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store, _, _ = next(
        dist.rendezvous("env://", rank=rank, world_size=world, timeout=timedelta(seconds=config.transport.timeout_s))
    )
    run_id = torchrun_run_id()
    run_key = key(run_id, RUN_DIR_KEY)
    lock = contextlib.nullcontext()
    if rank == 0:
        if run_dir is None:
            label = run_label(config.model.model, config.layout.strategy, world)
            run_dir = create_run_dir(config.output.output_dir, label, sample_settings(config))
        lock = RunDirLock(run_dir)  # rank 0 is the run's writer of record: one run per directory
        config = given.adopt(config, run_dir)  # images handed over as objects: into the run directory first
        store.set(run_key, str(run_dir))
    else:
        run_dir = Path(store_get(store, run_key, config.transport.timeout_s).decode())
        config = given.adopt(config, run_dir, copy=False)  # rank 0 copied them before it published run_dir
    # No launcher of ours is watching: rank 0 draws everyone's progress and prints the summary.
    progress = config.replace(nproc=world, show_progress=config.ui.show_progress and rank == 0)
    with lock, live_progress(store, run_id, progress, indices):
        code = _run(config, store, run_id, run_dir, launched, self_launched=False, indices=indices, received=received)
    return code, run_dir


def torchrun_run_id() -> str:
    """The run id of this torchrun launch: its rendezvous id and restart count (a restart of the
    ranks is a new run: nothing a dead attempt left in the store can be mistaken for the new one's)."""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', 'torchrun')}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def serve_stage(config: RunConfig, store, run_id: str, run_dir: Path, *, received: list[int], speaks: bool) -> int:
    """This rank's stage of a service under torchrun (ppsvd/serve/torchrun.py): jobs from rank 0's
    feeder, outputs into run_dir. speaks: rank 0 names a failed stage itself (False: the service
    on rank 0 says it). Returns the exit code, as _run."""
    return _run(
        config, store, run_id, run_dir, time.time(), self_launched=False, received=received, serve=True, speaks=speaks
    )


def _die_with_parent() -> None:
    """Linux: get SIGKILL if the launcher dies, so a killed launcher never leaves orphans."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass(frozen=True)
class _Job:
    """What one worker process knows about its run, fixed from start to end."""

    config: RunConfig
    store: Any
    run_id: str
    run_dir: Path
    run_start: float
    launched: float
    self_launched: bool
    rank: int
    world: int
    local_rank: int
    local_world: int
    indices: tuple[int, ...] | None = None
    serve: bool = False

    @staticmethod
    def from_env(config, store, run_id, run_dir, run_start, *, self_launched: bool, indices=None, serve=False) -> _Job:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return _Job(
            config=config,
            store=store,
            run_id=run_id,
            run_dir=Path(run_dir),
            run_start=run_start,
            launched=time.time(),
            self_launched=self_launched,
            rank=int(os.environ.get("RANK", "0")),
            world=world,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
            indices=None if indices is None else tuple(indices),
            serve=serve,
        )


def _run(
    config: RunConfig,
    store,
    run_id: str,
    run_dir: Path,
    run_start: float,
    *,
    self_launched: bool,
    indices: tuple[int, ...] | None = None,
    received: list[int] | None = None,
    serve: bool = False,
    speaks: bool = True,
) -> int:
    """Run this process's stage; returns the exit code (0 ok, 1 this stage failed, 3 stopped by
    another, 128 + signum interrupted). speaks: under torchrun, rank 0 names the stage that failed
    (False: its caller does, as a service's rank 0)."""
    job = _Job.from_env(
        config, store, run_id, run_dir, run_start, self_launched=self_launched, indices=indices, serve=serve
    )
    rank = job.rank
    received = catch_stop_signals() if received is None else received
    control = RunControl(
        store,
        run_id,
        rank,
        job.world,
        startup_grace_s=config.transport.timeout_s,
        stall_after_s=config.transport.stall_timeout_s,
        kill_blamed=not self_launched,  # a self-launched run's launcher kills a blamed stage itself
    )
    control.start_watching()
    closers: list = []  # how to close what _work opened (links, the result writer), however we leave
    try:
        _work(job, control, closers)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every way out must be reported, then mapped to an exit code
        if received:
            # Interrupted (Ctrl-C reaches every process of the group; a scheduler's SIGTERM, the
            # launcher passing a signal on). Stop the other stages too, in case only this one got
            # it; say nothing: the launcher (ours or torchrun) speaks for the run.
            control.interrupted(signal.Signals(received[0]).name)
            found = control.read_abort()
            if not self_launched and speaks and rank == 0 and found is not None and found.stage is not None:
                # The agent stopped us because a stage failed: rank 0 still names it (torchrun).
                error_line(describe(found, store, run_id))
            return 128 + received[0]
        reason = control.reason
        if reason is not None and reason.stage == rank:  # one of our threads failed first
            notice(f"stage {rank} failed: {reason.message}")
            return 1
        if reason is not None or isinstance(exc, Cancelled):  # another stage's failure stopped us
            if reason is None:
                cause = str(exc)
            elif reason.stage is None:
                cause = reason.message
            else:
                cause = f"stage {reason.stage} failed: {reason.message}"
            if not self_launched and speaks and rank == 0 and reason is not None:
                # Under torchrun no launcher of ours speaks for the run: rank 0 names the cause.
                error_line(describe(reason, store, run_id))
            elif config.ui.debug:
                notice(f"stage {rank} stopped because {cause}")
            return 3
        if isinstance(exc, PartnerLinkError) and reason is None:
            # The guidance partner's link broke first: a killed partner is the cause, not us.
            control.fail(str(exc), stage=exc.partner)
            if config.ui.debug:
                notice(f"stage {rank} stopped because its guidance partner, rank {exc.partner}, failed: {exc}")
            return 3
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        elif isinstance(exc, PpsvdError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        control.fail(message)
        notice(f"stage {rank} failed: {message}")
        if config.ui.debug:
            traceback.print_exc()
        return 1
    finally:
        control.stop_watching()
        for close in closers:
            try:
                close()
            except Exception:
                pass


def _work(job: _Job, control: RunControl, closers: list) -> None:
    """This rank's whole life: device, model, links, the start barrier, the plan, the samples, the timeline."""
    from ppsvd.models.base import build_stage_model, loading_phase  # heavy: imports torch
    from ppsvd.runtime.calibration import agree_on_plan
    from ppsvd.runtime.stage import StageContext, run_stage

    config, store, run_id = job.config, job.store, job.run_id
    if not config.model.is_synthetic:
        _quiet_libraries(config.ui.debug)
    device = _stage_device(job)

    # Sample i depends only on seed + i, so a resumed run simply skips the finished ones.
    todo = list(range(config.job.num_samples)) if job.indices is None else list(job.indices)
    layout = config.layout_plan(job.world)
    work = rank_work(
        config.layout.strategy, job.world, job.rank, todo, total_steps=config.job.total_steps, layout=layout
    )
    # Progress from here on: loading takes seconds (tiny) to minutes (SVD-XT), and says so.
    reporter = ProgressReporter(store, run_id, job.rank, lanes=job.serve)
    closers.append(reporter.close)
    reporter.phase(loading_phase(config, work.plan, work.stage))
    # The model first: its hand-off schema bounds what a link may ever accept.
    model = build_stage_model(config, work.plan, work.stage, device)
    if work.paired:  # before schema(): a guidance half hands on only its half of the conditioning
        model.split_guidance(work.half)
    if config.model.compile:  # --compile: compile now, timed apart, before calibration and the samples
        reporter.phase("compiling the UNet (torch.compile, once)")
    compile_s = model.warm_up()
    reporter.phase(PHASE_WAITING)
    transport = _open_links(job, work, layout, model, device, control, closers)
    # Start together: a stage that loads slower would otherwise find a backlog waiting, and fill,
    # hand-off and steady-state numbers would measure load skew instead of the pipeline.
    control.mark_ready()
    control.barrier("ready", config.transport.timeout_s)
    # The split (until now the even one: a model needs only N to know its part); --partition
    # auto may time every stage's work here, all of them loaded, before any sample starts.
    run_plan = agree_on_plan(config, model, store, run_id, job.rank, job.world, control.cancelled)
    plan = model.plan = run_plan.plan
    if job.rank == 0:
        _write_run_config(job, plan, run_plan)
    if work.linked:  # a pipeline stage: its bar shows the steps the agreed split gave it
        reporter.planned(plan.ranges[work.stage])
    ready = time.time()
    reporter.phase(PHASE_RUNNING)

    writer = _result_writer(job, work, plan, model, closers)
    ctx = StageContext(
        config=config,
        plan=plan,
        stage=work.stage,
        indices=None if job.serve else list(work.samples),
        cancelled=control.cancelled,
        fail=control.fail,
        reporter=reporter,
        watch=control.steps,
        run_dir=job.run_dir,
        take=_work_queue(job, work, control) if work.takes_from_queue and not job.serve else None,
        **(_serving(job, work, control) if job.serve else {}),
    )
    run_stage(ctx, model, transport, writer.write if writer else (lambda result: None))
    reporter.close()
    if writer is not None:
        writer.close()
    _finish(job, ctx, control, run_plan, ready=ready, device=device, compile_s=compile_s)


SERVE_KEEP_SPANS = 1000
"""A service's stages keep the timeline of their latest samples only (it runs for ever)."""


def _serving(job: _Job, work, control: RunControl) -> dict:
    """A service's stage: jobs from the feeder (stage 0), cancelled jobs dropped at every stage
    boundary, announced hand-offs, a bounded timeline; then say this rank serves (runtime/jobfeed.py)."""

    timeout_s = job.config.transport.timeout_s
    source = None
    if work.stage == 0:
        source = JobFeed(
            job.store,
            job.run_id,
            rank=job.rank,
            replica=work.replica,
            half=work.half,
            cancelled=control.cancelled,
            timeout_s=timeout_s,
            base=job.run_dir,
        )
    mark_serving(job.store, job.run_id, job.rank)
    return {
        "source": source,
        # Both halves of a guidance pair swap predictions every step: they must drop together, so
        # they never drop midway; a cancelled job's sample runs on and is discarded at the end.
        "drop": None if work.paired else drop_check(job.store, job.run_id, job.rank),
        "hops": Hops(job.store, job.run_id, timeout_s),
        "keep_spans": SERVE_KEEP_SPANS,
    }


def _stage_device(job: _Job):
    """This rank's torch device, after the checks that need the machine (CUDA count, GPUs per stage)."""
    import torch  # heavy: torch

    config = job.config
    if config.model.device == "cpu":
        # On CPU, float results depend on the thread count (measured: 7.6e-6 apart between 1 and
        # 2 threads on the tiny SVD). A count that does not depend on N keeps outputs identical
        # for any N; 1 (or OMP_NUM_THREADS) also stops N stages from thrashing shared cores.
        torch.set_num_threads(cpu_threads())
    cuda_count = torch.cuda.device_count() if config.model.device == "cuda" else 0
    config.check_devices(cuda_count, job.local_world)
    if config.model.device == "cuda":
        index = config.layout.gpu_index(job.local_rank)  # several stages per GPU only with --stages-per-gpu
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _open_links(job: _Job, work, layout, model, device, control: RunControl, closers: list):
    """The pipeline link to the neighbouring stages (None when there is none) and, for a guidance
    pair, the link to the partner (on model.pair). Every link is closed however the rank leaves."""
    from ppsvd.backends.base import StageWorld  # heavy: imports torch
    from ppsvd.backends.protocol import schema_payload_bytes

    config = job.config
    stage_world = StageWorld(
        rank=job.rank,
        world_size=job.world,
        local_rank=job.local_rank,
        local_world_size=job.local_world,
        store=job.store,
        device=str(device),
        transport=config.transport,
        run_id=job.run_id,
        links=layout.lane_links(),
    )
    transport = None
    if work.linked:
        transport = backends.load(config.resolved_transport)(
            stage_world, max_payload_bytes=schema_payload_bytes(model.schema())
        )
        closers.append(transport.close)
        transport.open()
    if work.paired:  # every rank of a cfg layout is paired, so all open their pair links together
        from ppsvd.runtime.cfg import open_pair_link  # heavy: imports torch

        model.pair = open_pair_link(
            backends.load(config.resolved_transport),
            stage_world,
            layout.pair_links(),
            max_payload_bytes=schema_payload_bytes(model.pair_schema()),
            cancelled=control.cancelled,
        )
        closers.append(model.pair.close)
    return transport


def _write_run_config(job: _Job, plan, run_plan) -> None:
    """Rank 0: config.json, with the split the stages agreed on and the costs it was planned from."""

    write_json_atomic(
        job.run_dir / "config.json",
        {
            **job.config.to_json(),
            "world_size": job.world,
            "step_ranges": plan.to_json(),
            "costs": run_plan.costs_json(),
            "run_id": public_run_id(job.run_id),
            "versions": software_versions(),
        },
    )


def _result_writer(job: _Job, work, plan, model, closers: list):
    """The writer of a rank that writes results (the last stage; the conditional half of a last
    guidance pair hands its frames to its partner), else None."""

    if not work.writes:
        return None
    on_written = None
    if job.serve:  # the launcher keeps the record (its job store): the writer tells it of each job
        on_written = written_hook(job.store, job.run_id, job.run_dir)
    writer = ResultWriter(
        job.run_dir,
        job.config,
        plan,
        model.describe(),
        manifest_name=f".manifest-{job.rank}.json" if work.writes_shard else MANIFEST,
        journal_name=f".manifest-{job.rank}.jsonl" if work.writes_shard else JOURNAL,
        on_written=on_written,
        settings=sample_settings(job.config),
    )
    # However this process leaves, the sample being written is finished first (bounded), so
    # no half-written file and no unlisted finished file is left behind.
    closers.insert(0, lambda: writer.stop(WRITER_GRACE_S))
    return writer


def _finish(job: _Job, ctx, control: RunControl, run_plan, *, ready: float, device, compile_s=None) -> None:
    """Publish this rank's timeline, wait for every rank, and (rank 0) gather the run's files."""
    from ppsvd.runtime.stage import stage_timeline  # heavy: imports torch

    # Recorded under the rank: data-parallel workers all run "stage 0" of a 1-stage plan.
    timeline = stage_timeline(
        ctx,
        job.rank,
        launched=job.launched,
        ready=ready,
        finished=time.time(),
        host=socket.gethostname(),
        device=str(device),
        compile_s=compile_s,
    )
    job.store.set(key(job.run_id, "timeline", job.rank), json.dumps(asdict(timeline)))
    control.mark_done()
    control.wait_all_done(job.config.transport.timeout_s)
    if job.rank == 0:
        _collect(job, run_plan)


def _work_queue(job: _Job, work, control: RunControl):
    """The take() of this rank's replica on the run's shared work queue (runtime/workqueue.py)."""

    queue = WorkQueue(
        job.store,
        job.run_id,
        work.samples,
        replica=work.replica,
        half=work.half,
        timeout_s=job.config.transport.timeout_s,
        cancelled=control.cancelled,
    )
    return queue.take


def cpu_threads() -> int:
    """Intra-op threads of a CPU stage: OMP_NUM_THREADS if set, else 1, whatever N is."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _quiet_libraries(debug: bool) -> None:
    """Library chatter (progress bars while loading weights, backend notices) is not for users."""
    if debug:
        return
    try:
        import diffusers.utils.logging as diffusers_logging  # heavy: diffusers
        import transformers.utils.logging as transformers_logging  # heavy: transformers

        for lib in (diffusers_logging, transformers_logging):
            lib.set_verbosity_error()
            lib.disable_progress_bar()
    except ImportError:
        pass


def _collect(job: _Job, run_plan) -> None:
    """Rank 0: gather every stage's timeline into timeline.json (and merge data-parallel manifests)."""

    config, store, run_id, run_dir = job.config, job.store, job.run_id, job.run_dir

    stages = [
        json.loads(store_get(store, key(run_id, "timeline", r), config.transport.timeout_s)) for r in range(job.world)
    ]
    timeline = RunTimeline.from_json(
        {
            "strategy": config.layout_plan(job.world).kind,
            "total_steps": config.job.total_steps,
            "num_samples": config.job.num_samples if job.indices is None else len(job.indices),
            "run_start": job.run_start if job.self_launched else min(s["launched"] for s in stages),
            "run_end": None if job.self_launched else time.time(),
            "partition": run_plan.mode,
            "costs": run_plan.costs_json(),
            "stages": stages,
        }
    )
    timeline.save(run_dir / "timeline.json")
    if config.layout_plan(job.world).replicas > 1:  # every replica wrote a shard of the manifest
        # The samples a resumed run kept (its journal), then what every worker wrote this time.
        entries, manifest = read_journal(run_dir / JOURNAL), None
        for part in sorted(run_dir.glob(".manifest-*.json")):
            manifest = json.loads(part.read_text())
            entries.extend(manifest["samples"])
            part.unlink()
        if manifest is not None:
            manifest["samples"] = sorted(entries, key=lambda e: e["index"])
            write_json_atomic(run_dir / MANIFEST, manifest)
            (run_dir / JOURNAL).unlink(missing_ok=True)
