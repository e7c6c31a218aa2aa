"""Start N local workers with PyTorch's elastic launcher (the engine behind torchrun), or join
a torchrun world, and turn what happened into a result or a one-line error naming the stage.

The launcher process hosts a small TCPStore of its own: workers publish progress and the
first failure's reason there, so the launcher can draw the bars and name the failed stage even
when that stage was killed outright. The elastic agent does the process management: it
watches the workers every 0.1 s and tears every worker down as soon as one fails.

Nothing of a self-launched run listens beyond this host: the store listens on 127.0.0.1 only
(hosts.loopback_store), the agent's rendezvous is a client of that same store instead of a
server of its own, and zmq links are ipc sockets in a private directory (or loopback tcp).
Once the abort key names a stage, the launcher SIGKILLs it if it has not left within
KILL_GRACE_S (a SIGSTOPped or hung stage would otherwise hold the agent for its 30 s SIGTERM
grace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import resource_tracker
from pathlib import Path

from ppsvd.analysis.timeline import RunTimeline
from ppsvd.backends.hosts import loopback_store
from ppsvd.config import RunConfig
from ppsvd.errors import Interrupted, StageFailedError
from ppsvd.io.atomic import DirIdentity, make_run_dir, remove_temp_files, run_label
from ppsvd.io.results import MANIFEST, listed_entries, missing_files
from ppsvd.runtime.control import kill_if_alive, new_run_id, public_run_id, read_abort
from ppsvd.runtime.progress import live_progress
from ppsvd.runtime.worker import WorkerSpec, worker_main


@dataclass
class LaunchResult:
    ok: bool
    run_dir: Path
    wall_s: float
    error: str | None = None
    failed_stage: int | None = None


def launch(
    config: RunConfig,
    run_dir: Path | None = None,
    *,
    raise_on_failure: bool = True,
    indices: tuple[int, ...] | None = None,
) -> LaunchResult:
    """Run config on config.nproc local workers; wait; return the result (or raise StageFailedError).

    run_dir and indices: a resumed run's directory and the samples still to generate. A signal
    (Ctrl-C, SIGTERM, SIGHUP) stops every worker and raises Interrupted, whatever raise_on_failure."""

    run_start = time.time()
    run_dir = (
        Path(run_dir)
        if run_dir is not None
        else make_run_dir(
            config.output.output_dir, run_label(config.model.model, config.layout.strategy, config.layout.nproc)
        )
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = DirIdentity.of(run_dir)
    run_id = new_run_id()
    store = loopback_store(config.transport.timeout_s)
    spec = WorkerSpec(
        config=config,
        run_id=run_id,
        run_dir=str(run_dir),
        run_start=run_start,
        store_host="127.0.0.1",
        store_port=store.port,
        indices=indices,
    )
    try:
        ended = run_workers(spec, store)
    finally:
        # Every worker is gone: what a killed one could not remove, the launcher does.
        if identity.problem() is None:
            remove_temp_files(run_dir)
    if ended.signum is not None:
        raise Interrupted(f"interrupted by {signal.Signals(ended.signum).name}", ended.signum, run_dir)
    error, failed_stage = ended.error, ended.failed_stage
    if error is None:
        error = _check_outputs(identity)
    wall_s = time.time() - run_start
    if error is None:
        _stamp_timeline(run_dir, run_start, run_start + wall_s)
    result = LaunchResult(ok=error is None, run_dir=run_dir, wall_s=wall_s, error=error, failed_stage=failed_stage)
    if error is not None and raise_on_failure:
        raise StageFailedError(error)
    return result


@dataclass(frozen=True)
class WorkersEnded:
    """How a launch of the workers ended: all well (error None), a failure naming the stage, or a signal."""

    error: str | None = None
    failed_stage: int | None = None
    signum: int | None = None


def run_workers(spec, store) -> WorkersEnded:
    """Start spec.config.nproc local workers (a worker.WorkerSpec) with the elastic launcher, around `store` (this
    process's loopback TCPStore), and wait until they all end. Also the service's supervisor
    runs its workers through this (ppsvd/serve/pipeline.py, in a thread of its own: the agent then
    installs no signal handlers, and the service handles signals itself)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException  # heavy: torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config, run_id = spec.config, spec.run_id
    if threading.current_thread() is threading.main_thread():  # a service's supervisor did it beforehand
        start_resource_tracker_immune_to_sighup()
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.layout.nproc,
        run_id=public_run_id(run_id),
        # The rendezvous joins our loopback store as a client (is_host False) rather than host a
        # store of its own on every interface.
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{store.port}",
        rdzv_configs={"timeout": int(config.transport.timeout_s), "is_host": False},
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    _quiet_elastic_logs(config.ui.debug)
    enforcer = _Enforcer(store.port, run_id, config.transport.timeout_s)
    try:
        with live_progress(store, run_id, config), enforcer, _no_second_store():
            elastic_launch(launch_config, worker_main)(spec)
    except ChildFailedError as exc:
        failed_stage, error = _explain(exc, store, run_id, enforcer.killed)
        return WorkersEnded(error=error, failed_stage=failed_stage)
    except SignalException as exc:  # the agent got the signal, passed it on to every worker and waited for them
        return WorkersEnded(signum=int(exc.sigval))
    except KeyboardInterrupt:  # Ctrl-C before the agent installed its handlers
        return WorkersEnded(signum=int(signal.SIGINT))
    finally:
        _remove_stale_sockets(run_id)
    return WorkersEnded()


class _Enforcer:
    """While the workers run: once the abort key names a stage, make sure that stage goes."""

    def __init__(self, port: int, run_id: str, timeout_s: float) -> None:
        self.port, self.run_id, self.timeout_s = port, run_id, timeout_s
        self.killed: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ppsvd-enforcer", daemon=True)

    def __enter__(self) -> _Enforcer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        from torch.distributed import TCPStore  # heavy: torch

        try:  # a connection of its own: the agent and the progress display use theirs
            store = TCPStore("127.0.0.1", self.port, is_master=False, timeout=timedelta(seconds=self.timeout_s))
        except Exception:
            return
        while not self._stop.wait(0.1):
            reason = read_abort(store, self.run_id)
            if reason is not None:
                if reason.stage is not None and kill_if_alive(store, self.run_id, reason.stage):
                    self.killed.add(reason.stage)
                return


@contextlib.contextmanager
def _no_second_store():
    """The agent's rendezvous would start a second store server for the workers' own
    init_process_group (shared on all interfaces); ppsvd's workers use the launcher's store."""
    name = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _explain(exc, store, run_id: str, killed_here: set[int] = frozenset()) -> tuple[int | None, str]:
    """The root cause: the reason a stage published, else how the first failed process died."""
    reason = read_abort(store, run_id)
    rank, failure = exc.get_first_failure()
    killed = failure.exitcode < 0 and failure.signal_name() != "<N/A>" and rank not in killed_here
    # A killed stage cannot say why; its neighbours may have noticed first and blamed it.
    if killed and (reason is None or reason.stage in (None, rank)):
        return rank, f"stage {rank} was killed by {failure.signal_name()}; every other stage was stopped"
    if reason is not None and reason.stage is not None:
        return reason.stage, f"stage {reason.stage} failed: {reason.message}"
    detail = f" ({reason.message})" if reason is not None else ""
    return rank, f"stage {rank} exited with code {failure.exitcode}{detail}; every other stage was stopped"


def _check_outputs(identity) -> str | None:
    """After a run that succeeded: the run directory is still the one created, and every file
    the manifest lists is on disk (the last stage checked as much; this sees later deletions too)."""

    problem = identity.problem()
    if problem is not None:
        return problem
    # A directory removed and made again may get the same inode number back: its files tell.
    missing = [name for name in ("config.json", MANIFEST) if not (identity.path / name).is_file()]
    missing += missing_files(identity.path, listed_entries(identity.path))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return f"files listed in the manifest are gone from {identity.path}: {', '.join(missing[:3])}{more}"
    return None


def start_resource_tracker_immune_to_sighup() -> None:
    """multiprocessing's resource tracker (a helper process the workers' queues register with)
    ignores SIGINT and SIGTERM but dies of SIGHUP; a closed terminal then ends in a screen of
    KeyErrors from the tracker started in its place. A process inherits an ignored signal, so
    start it while SIGHUP is ignored."""

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _remove_stale_sockets(run_id: str) -> None:
    """A killed stage cannot unlink its zmq ipc socket file; the launcher removes the run's socket directory."""
    from ppsvd.backends.zmq import remove_ipc_dir  # heavy: imports torch

    remove_ipc_dir(run_id)


def _stamp_timeline(run_dir: Path, run_start: float, run_end: float) -> None:
    """Add the launcher's view of the run (start and end of the whole launch) to timeline.json."""

    path = run_dir / "timeline.json"
    if path.exists():
        timeline = RunTimeline.load(path)
        timeline.run_start, timeline.run_end = run_start, run_end
        timeline.save(path)


def _quiet_elastic_logs(debug: bool) -> None:
    """The agent logs every worker failure with a traceback; ppsvd reports it in one line instead."""
    level = logging.INFO if debug else logging.CRITICAL
    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
    # torch gives each of its modules' loggers a level of its own (LOGLEVEL, default WARNING), so
    # the parents' level alone would not silence e.g. the agent's "Received 2 death signal".
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)]
    for name in {*prefixes, *names}:
        logging.getLogger(name).setLevel(level)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "INFO" if debug else "ERROR")
