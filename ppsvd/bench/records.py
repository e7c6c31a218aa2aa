"""The benchmark's records: what a sweep runs (BenchPlan), what came of each launch (BenchRun,
with its status) and of the whole sweep (BenchResult).

Plain data and their checks, shared by the sweep that fills them (sweep.py), the files written
from them (report.py), the terminal tables (ppsvd.commands.tables) and the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppsvd.analysis.metrics import RunMetrics
from ppsvd.bench.defaults import BENCH_COOLDOWN_S
from ppsvd.config import DEFAULT_PARTITION, PARTITIONS, RunConfig
from ppsvd.errors import ConfigError

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"

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

    cooldown_s: float = BENCH_COOLDOWN_S
    """Pause between runs (the benchmark's cool-down), not after the last one."""
    fail_fast: bool = False
    """Stop at the first failed run (the rest are recorded as skipped)."""

    def runs(self) -> list[tuple[int, str, str]]:
        """(N, strategy, partition) in sweep order: by GPU count, each strategy
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
                f"--partition {_join(modes)} must list {' and/or '.join(PARTITIONS)} once each (sizes differ per GPU "
                "count)"
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
        """total_time_sec (a benchmark column): the launch's wall time, only for a run that succeeded."""
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


def _join(values: Any) -> str:
    return ",".join(map(str, values))
