"""Start N local workers with PyTorch's elastic launcher (the engine behind torchrun), or join
a torchrun world, and turn what happened into a result or a one-line error naming the stage.

The launcher process hosts a small TCPStore of its own: workers publish progress and the
first failure's reason there, so the launcher can draw the bars and name the failed stage even
when that stage was killed outright. The elastic agent does the process management: it
watches the workers every 0.1 s and tears every worker down as soon as one fails.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ppsvd.config import RunConfig
from ppsvd.runtime.control import read_abort
from ppsvd.errors import StageFailedError


@dataclass
class LaunchResult:
    ok: bool
    run_dir: Path
    wall_s: float
    error: str | None = None
    failed_stage: int | None = None


def launch(config: RunConfig, run_dir: Path | None = None, *, raise_on_failure: bool = True) -> LaunchResult:
    """Run config on config.nproc local workers; wait; return the result (or raise StageFailedError)."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ppsvd.io.atomic import make_run_dir, run_label
    from ppsvd.runtime.progress import live_progress
    from ppsvd.runtime.worker import WorkerSpec, worker_main

    run_start = time.time()
    run_dir = Path(run_dir) if run_dir is not None else make_run_dir(config.output_dir, run_label(config.model, config.strategy, config.nproc))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=config.timeout_s))
    spec = WorkerSpec(
        config=config,
        run_id=run_id,
        run_dir=str(run_dir),
        run_start=run_start,
        store_host="127.0.0.1",
        store_port=store.port,
    )
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.nproc,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        rdzv_configs={"timeout": int(config.timeout_s)},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    _quiet_elastic_logs(config.debug)
    error, failed_stage = None, None
    try:
        with live_progress(store, run_id, config):
            elastic_launch(launch_config, worker_main)(spec)
    except ChildFailedError as exc:
        failed_stage, error = _explain(exc, store, run_id)
        _remove_stale_sockets(run_id)
    wall_s = time.time() - run_start
    if error is None:
        _stamp_timeline(run_dir, run_start, run_start + wall_s)
    result = LaunchResult(ok=error is None, run_dir=run_dir, wall_s=wall_s, error=error, failed_stage=failed_stage)
    if error is not None and raise_on_failure:
        raise StageFailedError(error)
    return result


def _explain(exc, store, run_id: str) -> tuple[int | None, str]:
    """The root cause: the reason a stage published, else how the first failed process died."""
    reason = read_abort(store, run_id)
    rank, failure = exc.get_first_failure()
    killed = failure.exitcode < 0 and failure.signal_name() != "<N/A>"
    # A killed stage cannot say why; its neighbours may have noticed first and blamed it.
    if killed and (reason is None or reason.stage in (None, rank)):
        return rank, f"stage {rank} was killed by {failure.signal_name()}; every other stage was stopped"
    if reason is not None and reason.stage is not None:
        return reason.stage, f"stage {reason.stage} failed: {reason.message}"
    detail = f" ({reason.message})" if reason is not None else ""
    return rank, f"stage {rank} exited with code {failure.exitcode}{detail}; every other stage was stopped"


def _remove_stale_sockets(run_id: str) -> None:
    """A killed stage cannot unlink its zmq ipc socket file; the launcher does."""
    import glob
    import tempfile

    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"ppsvd-{run_id}-*.sock")):
        try:
            os.unlink(path)
        except OSError:
            pass


def _stamp_timeline(run_dir: Path, run_start: float, run_end: float) -> None:
    """Add the launcher's view of the run (start and end of the whole launch) to timeline.json."""
    from ppsvd.analysis.timeline import RunTimeline

    path = run_dir / "timeline.json"
    if path.exists():
        timeline = RunTimeline.load(path)
        timeline.run_start, timeline.run_end = run_start, run_end
        timeline.save(path)


def _quiet_elastic_logs(debug: bool) -> None:
    """The agent logs every worker failure with a traceback; ppsvd reports it in one line instead."""
    level = logging.INFO if debug else logging.CRITICAL
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(level)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "INFO" if debug else "ERROR")
