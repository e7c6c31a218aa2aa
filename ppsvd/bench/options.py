"""The sweep's own options -> a checked BenchPlan: the device and GPU counts that fit this
machine, the strategies and partitions to compare, the pause between runs.

Counts and strategies may come as the CLI's text ('1,2,4,7', 'pipeline,data') or as lists. The
options every run shares (model, size, steps, seed, ...) are resolved like a run's
(ppsvd.api.options.bench_config).
"""

from __future__ import annotations

from collections.abc import Sequence

from ppsvd.bench.defaults import BENCH_COOLDOWN_S, BENCH_GPU_COUNTS
from ppsvd.bench.records import BenchPlan
from ppsvd.config import DEFAULT_MODEL_ID, STRATEGIES, SYNTHETIC_MODEL, RunConfig
from ppsvd.errors import ConfigError


def bench_device(device: str | None) -> tuple[str, int]:
    """--device of a sweep (default cuda, which needs a visible GPU) and the GPUs this machine shows."""
    available = visible_gpus() if device != "cpu" else 0
    if device is None:
        if available == 0:
            raise ConfigError(
                "no CUDA GPU is visible on this machine; run the experiment on CPU with "
                "`ppsvd bench --device cpu --step-ms 20` (synthetic model, 20 ms per step like a GPU)"
            )
        device = "cuda"
    if device == "cuda" and available == 0:
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return device, available


def bench_model(model_id: str | None, device: str) -> str:
    """--model-id of a sweep: by default the synthetic model on CPU, SVD-XT on CUDA."""
    if model_id is not None:
        return model_id
    return SYNTHETIC_MODEL if device == "cpu" else DEFAULT_MODEL_ID


def bench_plan(
    base: RunConfig,
    *,
    gpus: str | Sequence[int] | None = None,
    strategy: str | Sequence[str] = "pipeline",
    partition: str | Sequence[str] = "auto",
    cooldown: float = BENCH_COOLDOWN_S,
    fail_fast: bool = False,
    gpus_available: int = 0,
) -> BenchPlan:
    """The sweep of `ppsvd bench` (a BenchPlan), checked: the GPU counts that fit, the strategies
    and partitions to compare, over `base` (every run's config but its count and strategy)."""
    device = base.model.device
    if gpus is None:
        counts = list(default_gpu_counts(device, gpus_available))
    elif isinstance(gpus, str):
        counts = parse_int_list("--gpus", gpus)
    else:
        counts = parse_int_list("--gpus", ",".join(map(str, gpus)))
    names = [s.strip() for s in (strategy.split(",") if isinstance(strategy, str) else strategy) if s.strip()]
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategy {','.join(names)!r}: {name!r} is not one of {', '.join(STRATEGIES)}")
    return BenchPlan(
        base=base,
        gpu_counts=tuple(counts),
        strategies=tuple(names),
        partitions=tuple(
            p.strip() for p in (partition.split(",") if isinstance(partition, str) else partition) if p.strip()
        ),
        cooldown_s=cooldown,
        fail_fast=fail_fast,
    ).validate(gpus_available if device == "cuda" else None)


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA or without a working torch)."""
    try:
        import torch  # heavy: only when the machine's GPUs must be counted

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def default_gpu_counts(device: str, gpus_available: int) -> tuple[int, ...]:
    """The benchmark's GPU counts (1, 2, 4, 7) that fit: on CUDA, at most the visible GPUs; on CPU all."""
    if device == "cpu":
        return BENCH_GPU_COUNTS
    return tuple(n for n in BENCH_GPU_COUNTS if n <= gpus_available)


def parse_int_list(flag: str, text: str) -> list[int]:
    """'1,2,4,7' -> [1, 2, 4, 7] with a one-line error for anything else."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. {flag} 1,2,4,7") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text!r} must list positive integers, e.g. {flag} 1,2,4,7")
    return values
