"""The benchmark sweep: one fresh launch per (GPU count, strategy), as the original guide's
benchmark.sh did (see bench/defaults.py).

For each GPU count N (and each strategy: 'pipeline', and 'data' as the baseline) the sweep
launches N worker processes, times the whole launch from outside (total_time_sec), reads the
run's timeline.json, and derives metrics (ppsvd.analysis.metrics). Speedup and efficiency are
relative to the 1-GPU run. A failed run is recorded and the sweep goes on (unless fail_fast).
Results are rewritten after every run, so an interrupted sweep still leaves its CSV and JSON.

Importing this module does not import torch or matplotlib: the workers and the plots import them.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ppsvd import __version__
from ppsvd.analysis.metrics import efficiency, over_ideal_note, raw_efficiency, speedup, summarize
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.bench import report
from ppsvd.bench.records import STATUS_FAILED, STATUS_OK, BenchPlan, BenchResult, BenchRun
from ppsvd.config import RunConfig
from ppsvd.planning.costs import CostModel
from ppsvd.planning.ranks import rank_work
from ppsvd.runtime import launch as launcher


class LaunchLike(Protocol):
    """What the sweep needs from ppsvd.runtime.launch.LaunchResult."""

    ok: bool
    error: str | None
    failed_stage: int | None


Launcher = Callable[[RunConfig, Path], LaunchLike]
"""launch(config, run_dir) -> result; must not raise for a run that fails."""


class SweepObserver:
    """Hooks for showing the sweep (Rich progress in the command); the defaults do nothing."""

    def planned(self, plan: BenchPlan, results_dir: Path) -> None: ...

    def starting(self, position: int, total: int, run: BenchRun) -> None: ...

    def cooling(self, seconds: float) -> None: ...

    def finished(self, position: int, total: int, run: BenchRun) -> None: ...


# -- notes on a run's shape ------------------------------------------------------------------


def run_note(config: RunConfig) -> str | None:
    """Why this count is not a clean split: uneven steps (pipeline) or an uneven sample count (data)."""
    n, t, s = config.layout.nproc, config.job.total_steps, config.job.num_samples
    if config.layout.strategy == "pipeline":
        if config.layout.partition != "even":  # auto and explicit sizes are chosen splits: no note
            return None
        return rank_work(config.layout.strategy, n, 0, range(s), total_steps=t).plan.notice()
    if config.layout.strategy != "data" or s % n == 0:
        return None
    # Workers take samples from a queue: with equal speeds the first s mod n take one more.
    base, extra = divmod(s, n)
    counts = [base + (1 if k < extra else 0) for k in range(n)]
    text = (
        f"{s} samples over {n} workers: about {'+'.join(map(str, counts))} each from the work queue; "
        f"the busiest worker ({max(counts)} samples) sets the time"
    )
    if base == 0:
        text += f", {counts.count(0)} worker(s) have nothing to do"
    return text


def derive_scaling(runs: list[BenchRun]) -> None:
    """Fill in speedup and efficiency against the 1-GPU run, per strategy.

    Pipeline runs compare steady-state throughput; data runs compare overall throughput (see
    RunMetrics.throughput). The baseline is the 1-GPU run of the same strategy, or of the other
    one (with one process both strategies do the same work), measured the same way. Without a
    1-GPU run, each run's own estimate stands in (RunMetrics.efficiency: the 1-stage rate from the
    costs it measured), and efficiency_basis says so.
    """
    ones = {r.strategy: r.metrics for r in runs if r.ok and r.gpu_count == 1 and r.metrics is not None}
    for run in runs:
        run.speedup = run.efficiency = None
        run.efficiency_basis = ""
        if not run.ok or run.metrics is None:
            continue
        base = ones.get(run.strategy) or next(iter(ones.values()), None)
        if base is None:
            run.speedup, run.efficiency = run.metrics.speedup, run.metrics.efficiency
            run.efficiency_basis = run.metrics.efficiency_basis
            continue
        run.efficiency_basis = "measured 1-GPU run"
        base_tp = base.steady_throughput if run.strategy == "pipeline" else base.overall_throughput
        if base_tp is None:
            base_tp = base.throughput
        # Stages of different speeds (as this run measured them): the ideal is the sum of their own rates.
        costs = CostModel.from_json(run.metrics.costs) if run.metrics.costs else None
        speeds = costs.for_stages(run.gpu_count).speeds if costs is not None else ()
        run.speedup = speedup(run.metrics.throughput, base_tp)
        run.efficiency = efficiency(run.metrics.throughput, base_tp, run.gpu_count, speeds)
        uneven = costs.uneven_speeds(run.gpu_count) if costs is not None else None
        if uneven:
            run.efficiency_basis += f", scaled by the stage speeds this run measured; {uneven}"
        run.efficiency_basis += over_ideal_note(raw_efficiency(run.metrics.throughput, base_tp, run.gpu_count, speeds))


# -- the sweep -------------------------------------------------------------------------------


def default_launcher(config: RunConfig, run_dir: Path) -> LaunchLike:
    return launcher.launch(config, run_dir, raise_on_failure=False)


def run_dir_for(results_dir: Path, n: int, strategy: str, partition: str = "") -> Path:
    """runs/4gpu-pipeline, or runs/4gpu-pipeline-auto when the sweep compares partitions."""
    return results_dir / "runs" / f"{n}gpu-{strategy}{'-' + partition if partition else ''}"


def run_bench(
    plan: BenchPlan,
    results_dir: Path,
    *,
    launcher: Launcher | None = None,
    observer: SweepObserver | None = None,
    environment: dict[str, Any] | None = None,
    argv: list[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    plots: bool = True,
) -> BenchResult:
    """Run the whole sweep; write CSV and JSON after every run, the PNGs at the end.

    The plan must already be validated (BenchPlan.validate). `launcher`, `sleep` and `clock`
    are parameters so tests can run the sweep logic without processes or waiting.
    """
    launcher = launcher or default_launcher
    observer = observer or SweepObserver()
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    result = BenchResult(
        plan=plan,
        results_dir=results_dir,
        runs=[
            BenchRun(gpu_count=n, strategy=s, partition=p, show_partition=len(plan.partition_modes) > 1)
            for n, s, p in plan.runs()
        ],
        environment=environment if environment is not None else collect_environment(plan.base.model.device),
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        argv=list(sys.argv if argv is None else argv),
    )
    total = len(result.runs)
    stopped = False
    for position, run in enumerate(result.runs):
        if stopped:
            break  # fail-fast: the rest stay 'skipped'
        if position > 0 and plan.cooldown_s > 0:
            observer.cooling(plan.cooldown_s)
            sleep(plan.cooldown_s)
        config = plan.config_for(run.gpu_count, run.strategy, run.partition).replace(
            extra={**plan.base.extra, "bench": {"results_dir": str(results_dir), "position": position}}
        )
        run.note = run_note(config)
        run.run_dir = str(
            run_dir_for(results_dir, run.gpu_count, run.strategy, run.partition if run.show_partition else "")
        )
        observer.starting(position, total, run)
        _launch_one(run, config, launcher, clock)
        derive_scaling(result.runs)
        report.write_tables(result)
        observer.finished(position, total, run)
        stopped = plan.fail_fast and run.status == STATUS_FAILED
    if plots:
        report.write_plots(result)
    report.write_tables(result)
    return result


def _launch_one(run: BenchRun, config: RunConfig, launcher: Launcher, clock: Callable[[], float]) -> None:
    """Launch, time it from outside (as the original benchmark.sh timed torchrun), and read its timeline."""
    run_dir = Path(run.run_dir)
    started = clock()
    try:
        outcome = launcher(config, run_dir)
    except Exception as exc:  # a launcher bug or a crash: record it, keep sweeping
        run.wall_s = clock() - started
        run.status, run.error = STATUS_FAILED, f"{type(exc).__name__}: {exc}"
        return
    run.wall_s = clock() - started
    if not outcome.ok:
        run.status = STATUS_FAILED
        run.error = outcome.error or "the run failed (no reason given)"
        run.failed_stage = outcome.failed_stage
        return
    try:
        timeline = RunTimeline.load(run_dir / "timeline.json")
        run.metrics = summarize(timeline, wall_s=run.wall_s)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        run.status, run.error = STATUS_FAILED, f"no usable timeline.json in {run_dir}: {exc}"
        return
    if run.metrics.completed < config.job.num_samples:
        run.status = STATUS_FAILED
        run.error = f"only {run.metrics.completed} of {config.job.num_samples} samples completed"
        return
    run.status = STATUS_OK


# -- machine facts ---------------------------------------------------------------------------


def collect_environment(device: str) -> dict[str, Any]:
    """Versions and hardware, so numbers from different machines are never confused."""
    env: dict[str, Any] = {
        "ppsvd": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import torch  # heavy: the sweep's own process needs it only for these facts

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # the environment is informative; never fail a sweep over it
        env["torch"] = f"unavailable ({type(exc).__name__})"
    for name in ("CUDA_VISIBLE_DEVICES", "NCCL_P2P_DISABLE", "NCCL_IB_DISABLE"):
        if name in os.environ:
            env.setdefault("env", {})[name] = os.environ[name]
    return env


def new_results_dir(output_dir: Path) -> Path:
    """output_dir/bench-YYYYmmdd-HHMMSS (with -2, -3... if that exists already)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = Path(output_dir) / f"bench-{stamp}"
    k = 2
    while candidate.exists():
        candidate = Path(output_dir) / f"bench-{stamp}-{k}"
        k += 1
    candidate.mkdir(parents=True)
    return candidate
