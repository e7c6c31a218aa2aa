"""Start N local workers with PyTorch's elastic launcher (the engine behind torchrun), or join
a torchrun world, and turn what happened into a result or a one-line error naming the stage.

The launcher process hosts a small TCPStore of its own: workers publish progress and the
first failure's reason there, so the launcher can draw the bars and name the failed stage even
when that stage was killed outright. The elastic agent does the process management: it starts
each worker as a process of its own, `python -m ppsvd.runtime.entry SPEC.json`, as torchrun
starts a script (never by re-importing the caller's main module, so the API works from a plain
script or a notebook), watches them every 0.1 s and tears every worker down as soon as one
fails. Each worker runs in a session of its own: a Ctrl-C in the terminal reaches the launcher,
whose agent passes it on to every worker.

Nothing of a self-launched run listens beyond this host: the store listens on 127.0.0.1 only
(hosts.loopback_store), the agent's rendezvous is a client of that same store instead of a
server of its own, and zmq links are ipc sockets in a private directory (or loopback tcp).
Once the abort key names a stage, the launcher SIGKILLs it if it has not left within
KILL_GRACE_S (a SIGSTOPped or hung stage would otherwise hold the agent for its 30 s SIGTERM
grace), and only ever a worker it started (runtime/children.py: never a pid taken from the store
alone). When every worker has ended but one never finished its work (exit code 0 early), the
launcher says which stage.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ppsvd.analysis.timeline import RunTimeline
from ppsvd.backends.hosts import loopback_store, read_host
from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError, Interrupted, PpsvdError, StageFailedError, raised_from
from ppsvd.io import given
from ppsvd.io.atomic import DirIdentity, remove_temp_files, run_label
from ppsvd.io.results import MANIFEST, listed_entries, missing_files
from ppsvd.io.resume import sample_settings
from ppsvd.io.rundir import RunDirLock, create_named_run_dir, create_run_dir, read_marker, remove_if_unstarted
from ppsvd.runtime.children import WORKER_MODULE, OwnWorkers
from ppsvd.runtime.control import KILL_GRACE_S, key, new_run_id, public_run_id, read_abort
from ppsvd.runtime.progress import live_progress
from ppsvd.runtime.signals import STOP_SIGNALS
from ppsvd.runtime.worker import WorkerSpec


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

    run_dir and indices: a resumed run's directory (it must be a run directory: its marker) and
    the samples still to generate; a run_dir that does not exist yet is created for a new run.
    The run directory is locked for the whole launch (a second writer is refused); one this
    launch created is removed again if the run never started. A signal (Ctrl-C, SIGTERM, SIGHUP)
    stops every worker and raises Interrupted, whatever raise_on_failure."""

    run_start = time.time()
    _raise_open_file_limit()
    created = run_dir is None or not Path(run_dir).exists()
    if run_dir is None:
        label = run_label(config.model.model, config.layout.strategy, config.layout.nproc)
        run_dir = _no_emfile(config, lambda: create_run_dir(config.output.output_dir, label, sample_settings(config)))
    elif created:  # a new run in a directory the caller named (the bench's runs)
        run_dir = create_named_run_dir(Path(run_dir), sample_settings(config))
    else:
        run_dir = Path(run_dir)
        read_marker(run_dir)
    lock = None
    try:
        lock = RunDirLock(run_dir).acquire()
        config = given.adopt(config, run_dir)  # images handed over as objects: into RUN_DIR/inputs
        return _no_emfile(config, lambda: _launch(config, run_dir, run_start, raise_on_failure, indices))
    except Interrupted as exc:
        if exc.run_dir is None:  # stopped before the agent started: still name the run directory
            raise Interrupted(str(exc), exc.signum, run_dir) from None
        raise
    finally:
        if lock is not None:
            lock.release()
        if created:
            remove_if_unstarted(run_dir)


def _launch(config: RunConfig, run_dir: Path, run_start: float, raise_on_failure: bool, indices) -> LaunchResult:
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
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.layout.nproc,
        run_id=public_run_id(run_id),
        # The rendezvous joins our loopback store as a client (is_host False) rather than host a
        # store of its own on every interface.
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{store.port}",
        # read_timeout bounds the agent's connection to it too (torch's default 60 s; shorter when
        # --timeout is: a launcher short of file descriptors otherwise retries for a minute).
        rdzv_configs={
            "timeout": int(config.transport.timeout_s),
            "read_timeout": max(1, min(60, int(config.transport.timeout_s))),
            "is_host": False,
        },
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
    )
    _quiet_elastic_logs(config.ui.debug)
    main_thread = threading.current_thread() is threading.main_thread()
    enforcer = _Enforcer(store.port, run_id, config.transport.timeout_s)
    # The agent replaces the signal handlers (in the main thread only); they are put back after.
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if main_thread else {}
    # The spec travels as JSON in a private 0700 directory, removed once the workers are gone.
    private = tempfile.TemporaryDirectory(prefix="ppsvd-spec-")
    try:
        with private, live_progress(store, run_id, config, spec.indices), enforcer, _no_second_store():
            elastic_launch(launch_config, sys.executable)("-m", WORKER_MODULE, str(spec.write(private.name)))
    except ChildFailedError as exc:
        failed_stage, error = _explain(exc, store, run_id, enforcer.killed)
        return WorkersEnded(error=error, failed_stage=failed_stage)
    except SignalException as exc:  # the agent got the signal, passed it on to every worker and waited for them
        _ignore_stop_signals(main_thread)  # the run is stopping already: a second Ctrl-C only repeats the request
        return WorkersEnded(signum=int(exc.sigval))
    except KeyboardInterrupt:  # Ctrl-C before the agent installed its handlers
        _ignore_stop_signals(main_thread)
        return WorkersEnded(signum=int(signal.SIGINT))
    except Interrupted as exc:  # the command's own handlers, before the agent installed its ones
        _ignore_stop_signals(main_thread)
        return WorkersEnded(signum=exc.signum)
    finally:
        _ignore_stop_signals(main_thread)
        # Every worker must be gone before the launcher cleans up after them (a second signal can
        # cut the agent's own shutdown short): those still there get SIGKILL after a grace.
        enforcer.workers.stop_all(STOP_GRACE_S)
        _remove_stale_sockets(run_id)
        for sig, handler in handlers.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)
    unfinished = _unfinished(store, run_id, config.layout.nproc)
    if unfinished is not None:
        return WorkersEnded(error=unfinished[1], failed_stage=unfinished[0])
    return WorkersEnded()


def _unfinished(store, run_id: str, nproc: int) -> tuple[int, str] | None:
    """Every worker exited 0: (stage, the line) if one of them never marked its work done."""
    try:
        missing = [r for r in range(nproc) if not store.check([key(run_id, "done", r)])]
    except Exception:
        return None
    if not missing:
        return None
    reason = read_abort(store, run_id)
    if reason is not None and reason.stage is not None:
        return reason.stage, f"stage {reason.stage} failed: {reason.message}"
    return (
        missing[0],
        f"stage {missing[0]} ended before finishing its work (its process exited with no error); "
        "every other stage was stopped",
    )


STOP_GRACE_S = 5.0
"""How long the launcher lets a stopping worker finish the sample it writes (its own grace is 3 s)."""
OPEN_FILES_WANTED = 8192
"""The soft open-file limit a launch asks for (up to the hard limit): N workers and their pipes,
sockets and store connections need far more than the 1024 some systems start with, or 32."""


def _ignore_stop_signals(main_thread: bool = True) -> None:
    """While the launcher cleans up after a signal, later ones only repeat it (main thread only:
    a service's supervisor runs the workers in a thread and handles signals itself)."""
    if main_thread:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _raise_open_file_limit() -> None:
    """Raise the soft open-file limit towards the hard one, as servers and launchers do."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def _no_emfile(config: RunConfig, action):
    """Run action(); running out of file descriptors becomes one line naming the limit and the fix."""
    import resource

    try:
        return action()
    except PpsvdError:  # ppsvd's own verdicts (a stage failed, interrupted, ...) stand
        raise
    except Exception as exc:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if not (_out_of_descriptors(exc) or 0 <= soft < FEW_OPEN_FILES):
            raise
        raise ConfigError(
            f"too many open files: this process may have {soft} open (ulimit -n), too few to start "
            f"{config.layout.nproc} worker(s); raise the limit, e.g. `ulimit -n 4096`, and run again"
        ) from None


FEW_OPEN_FILES = 64
"""Under this open-file limit a failure to start the workers is put down to it: c10d's store and
the elastic agent report running out of descriptors in words only ("Failed to init uv loop",
"Failed to create a socket"), without the errno."""


def _out_of_descriptors(exc: BaseException) -> bool:
    """exc, or an exception it was raised from, is EMFILE/ENFILE: an OSError, or c10d's store
    errors (RendezvousConnectionError from DistNetworkError), which carry only the message."""
    codes = (errno.EMFILE, errno.ENFILE)
    return any(
        (isinstance(e, OSError) and e.errno in codes)
        or "Too many open files" in str(e)
        or any(f"errno: {code} " in str(e) for code in codes)
        for e in raised_from(exc)
    )


class _Enforcer:
    """While the workers run: once the abort key names a stage, make sure that stage goes."""

    def __init__(self, port: int, run_id: str, timeout_s: float) -> None:
        self.port, self.run_id, self.timeout_s = port, run_id, timeout_s
        self.killed: set[int] = set()
        self.workers = OwnWorkers()
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
                if reason.stage is not None and self._kill(store, reason.stage):
                    self.killed.add(reason.stage)
                return

    def _kill(self, store, stage: int) -> bool:
        """SIGKILL the blamed stage if it does not leave within KILL_GRACE_S: found by the pid it
        published, but only if that pid is a worker this launch started (runtime/children.py)."""
        facts = read_host(store, self.run_id, stage)
        return facts is not None and self.workers.kill(facts.pid, KILL_GRACE_S)


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
    if reason is not None and reason.stage in exc.failures:  # the blamed stage: did a signal end it?
        rank, failure = reason.stage, exc.failures[reason.stage]
    killed = failure.exitcode < 0 and failure.signal_name() != "<N/A>" and rank not in killed_here
    # A killed stage cannot say why; its neighbours (or its guidance partner) may have noticed
    # first and blamed it.
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


def _remove_stale_sockets(run_id: str) -> None:
    """A killed stage cannot unlink its zmq ipc socket file; the launcher removes the run's socket
    directories (the pipeline links' and the guidance pairs')."""
    from ppsvd.backends.zmq import remove_ipc_dir  # heavy: imports torch
    from ppsvd.runtime.cfg import pair_run_id  # heavy: imports torch

    remove_ipc_dir(run_id)
    remove_ipc_dir(pair_run_id(run_id))


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
