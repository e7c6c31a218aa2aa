"""The benchmark sweep: one fresh launch per (GPU count, strategy), as the guide's benchmark.sh.

For each GPU count N (and each strategy: 'pipeline', and 'data' as the baseline) the sweep
launches N worker processes, times the whole launch from outside (the guide's total_time_sec),
reads the run's timeline.json, and derives metrics (ppsvd.analysis.metrics). Speedup and efficiency are
relative to the 1-GPU run. A failed run is recorded and the sweep goes on (unless fail_fast).
Results are rewritten after every run, so an interrupted sweep still leaves its CSV and JSON.

Importing this module does not import torch or matplotlib: the launcher and the plots are
imported where they are used.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ppsvd import __version__
from ppsvd.analysis.metrics import RunMetrics, efficiency, over_ideal_note, raw_efficiency, speedup, summarize
from ppsvd.analysis.timeline import RunTimeline
from ppsvd.bench.report import CSV_NAME, JSON_NAME, THROUGHPUT_PNG, TIMELINE_PNG  # noqa: F401 (re-exported)
from ppsvd.config import DEFAULT_PARTITION, PARTITIONS, RunConfig
from ppsvd.costs import CostModel
from ppsvd.errors import ConfigError
from ppsvd.plan import rank_work

# The guide's benchmark.sh: its GPU counts, the defaults it adds to a run's, its cooldown. (Its
# 28 steps and latent 1 4 14 64 64 are every run's defaults: config.DEFAULT_TOTAL_STEPS/_LATENT_SHAPE.)
GUIDE_GPU_COUNTS = (1, 2, 4, 7)
GUIDE_NUM_SAMPLES = 10
GUIDE_SEED = 42
GUIDE_COOLDOWN_S = 5.0


STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"


class LaunchLike(Protocol):
    """What the sweep needs from ppsvd.runtime.launch.LaunchResult."""

    ok: bool
    error: str | None
    failed_stage: int | None


Launcher = Callable[[RunConfig, Path], LaunchLike]
"""launch(config, run_dir) -> result; must not raise for a run that fails."""


SWEPT_STRATEGIES = ("pipeline", "data")
"""What a sweep compares at every GPU count (a guidance pair needs an even count: not swept)."""


@dataclass(frozen=True, kw_only=True)
class BenchPlan:
    """What to sweep: a base RunConfig (everything but nproc and strategy), counts, strategies."""

    base: RunConfig
    gpu_counts: tuple[int, ...]
    strategies: tuple[str, ...] = ("pipeline",)
    partitions: tuple[str, ...] = ()
    """--partition values to compare (even, auto) on every pipeline count above 1; one
    1-GPU run and the data-parallel runs use the first (they have one split only). Empty: the
    base config's."""

    @property
    def partition_modes(self) -> tuple[str, ...]:
        return self.partitions or (self.base.layout.partition,)

    cooldown_s: float = GUIDE_COOLDOWN_S
    """Pause between runs (the guide's `sleep 5`), not after the last one."""
    fail_fast: bool = False
    """Stop at the first failed run (the rest are recorded as skipped)."""

    def runs(self) -> list[tuple[int, str, str]]:
        """(N, strategy, partition) in sweep order: by GPU count as in the guide, each strategy
        in turn, each partition for a pipeline of 2 or more stages."""
        return [
            (n, strategy, partition)
            for n in self.gpu_counts
            for strategy in self.strategies
            for partition in (self.partition_modes if strategy == "pipeline" and n > 1 else self.partition_modes[:1])
        ]

    def config_for(self, n: int, strategy: str, partition: str | None = None) -> RunConfig:
        # Workers draw no progress bars of their own: the sweep's display is the only live one.
        return self.base.replace(
            nproc=n, strategy=strategy, partition=partition or self.partition_modes[0], show_progress=False
        )

    def validate(self, gpus_available: int | None) -> BenchPlan:
        """Every check before the first launch, so a bad count costs no time.

        gpus_available: CUDA devices visible (None when benchmarking on CPU, where a 'GPU'
        is a worker process and any count can run).
        """
        if not self.gpu_counts:
            raise ConfigError("--gpus is empty; give counts such as --gpus 1,2,4,7")
        if len(set(self.gpu_counts)) != len(self.gpu_counts):
            raise ConfigError(f"--gpus {_join(self.gpu_counts)} repeats a count; list each count once")
        if (
            not self.strategies
            or len(set(self.strategies)) != len(self.strategies)
            or not set(self.strategies) <= set(SWEPT_STRATEGIES)
        ):
            raise ConfigError(
                f"--strategy {_join(self.strategies)} must list pipeline and/or data once each "
                "(cfg, hybrids and auto: compare them with `ppsvd plan` or `ppsvd simulate --strategy ...`)"
            )
        modes = self.partition_modes
        if len(set(modes)) != len(modes) or not set(modes) <= set(PARTITIONS):
            raise ConfigError(
                f"--partition {_join(modes)} must list {' and/or '.join(PARTITIONS)} once each (sizes differ per GPU count)"
            )
        if self.cooldown_s < 0:
            raise ConfigError(f"--cooldown {self.cooldown_s:g} is negative; use 0 or more seconds")
        if gpus_available is not None:
            too_many = [n for n in self.gpu_counts if n > gpus_available]
            if too_many:
                fitting = [n for n in self.gpu_counts if n <= gpus_available] or [1]
                raise ConfigError(
                    f"--gpus {_join(self.gpu_counts)} asks for {max(too_many)} GPUs but this machine has "
                    f"{gpus_available}; use --gpus {_join(fitting)}"
                )
        for n, strategy, partition in self.runs():
            self.config_for(n, strategy, partition).validate()
        return self


@dataclass
class BenchRun:
    """One launch of the sweep and what came of it."""

    gpu_count: int
    strategy: str
    partition: str = DEFAULT_PARTITION
    """--partition of this run (even or auto)."""
    status: str = STATUS_SKIPPED
    run_dir: str | None = None
    wall_s: float | None = None
    """The launch's wall time measured around it (also for a failed run: time until it failed)."""
    error: str | None = None
    failed_stage: int | None = None
    note: str | None = None
    """Partition or shard note for counts that do not divide T (or S)."""
    metrics: RunMetrics | None = None
    speedup: float | None = None
    efficiency: float | None = None
    efficiency_basis: str = ""
    """What speedup and efficiency are relative to: the measured 1-GPU run, or the run's own estimate."""
    show_partition: bool = False
    """Name the partition in the label (the sweep compares several)."""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def total_time_sec(self) -> float | None:
        """The guide's total_time_sec: only for a run that succeeded."""
        return self.wall_s if self.ok else None

    @property
    def per_sample_sec(self) -> float | None:
        return self.metrics.per_sample_s if self.ok and self.metrics is not None else None

    @property
    def throughput(self) -> float | None:
        return self.metrics.throughput if self.metrics is not None else None

    @property
    def label(self) -> str:
        text = f"{self.gpu_count} GPU{'s' if self.gpu_count != 1 else ''} · {self.strategy}"
        return f"{text} · {self.partition}" if self.show_partition and self.strategy == "pipeline" else text

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu_count": self.gpu_count,
            "strategy": self.strategy,
            "partition": self.partition,
            "status": self.status,
            "total_time_sec": self.total_time_sec,
            "per_sample_sec": self.per_sample_sec,
            "wall_s": self.wall_s,
            "speedup": self.speedup,
            "efficiency": self.efficiency,
            "efficiency_basis": self.efficiency_basis,
            "note": self.note,
            "error": self.error,
            "failed_stage": self.failed_stage,
            "run_dir": self.run_dir,
            "metrics": self.metrics.to_json() if self.metrics is not None else None,
        }


@dataclass
class BenchResult:
    plan: BenchPlan
    results_dir: Path
    runs: list[BenchRun] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    argv: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """name -> path of what the sweep wrote (csv, json, throughput_png, timeline_png)."""

    @property
    def failed(self) -> list[BenchRun]:
        return [r for r in self.runs if r.status == STATUS_FAILED]


class SweepObserver:
    """Hooks for showing the sweep (Rich progress in the command); the defaults do nothing."""

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
    from ppsvd.runtime.launch import launch

    return launch(config, run_dir, raise_on_failure=False)


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
    from ppsvd.bench import report

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
    """Launch, time it from outside (as benchmark.sh times torchrun), and read its timeline."""
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


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA or without a working torch)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def default_gpu_counts(device: str, gpus_available: int) -> tuple[int, ...]:
    """The guide's counts (1, 2, 4, 7) that fit: on CUDA, at most the visible GPUs; on CPU all."""
    if device == "cpu":
        return GUIDE_GPU_COUNTS
    return tuple(n for n in GUIDE_GPU_COUNTS if n <= gpus_available)


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
        import torch

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


def _join(values: Any) -> str:
    return ",".join(map(str, values))
