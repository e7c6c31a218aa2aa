"""Step splits: how T steps are cut into N contiguous ranges (and S samples into shards), and
what an ideal run of equal step costs takes.

No torch, no processes: integers in, integers (or seconds) out, ValueError with the values. The
split that weighs real costs (`--partition auto`) is ppsvd.planning.costs.auto_split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """Contiguous step ranges, one per stage: stage k runs steps ranges[k] of every sample."""

    total_steps: int
    ranges: tuple[range, ...]

    @property
    def num_stages(self) -> int:
        return len(self.ranges)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.ranges)

    @property
    def is_even(self) -> bool:
        return len(set(self.sizes)) == 1

    @property
    def bottleneck(self) -> int:
        """The first stage with the most steps: it sets the pipeline's pace."""
        sizes = self.sizes
        return sizes.index(max(sizes))

    def stage_of_step(self, step: int) -> int:
        for stage, steps in enumerate(self.ranges):
            if step in steps:
                return stage
        raise ValueError(f"step {step} is outside 0..{self.total_steps - 1}")

    def describe(self) -> str:
        """'4+4+4+4' for even plans; '10+9+9 (stage 0 is the bottleneck)' for uneven ones."""
        text = "+".join(str(n) for n in self.sizes)
        if not self.is_even:
            text += f" (stage {self.bottleneck} is the bottleneck with {max(self.sizes)} steps)"
        return text

    def notice(self) -> str | None:
        """A one-line notice for uneven plans, None for even ones."""
        if self.is_even:
            return None
        n, t = self.num_stages, self.total_steps
        return (
            f"{t} steps do not divide evenly over {n} stages: split {self.describe()}; "
            f"the pipeline runs at the pace of {max(self.sizes)} steps per stage "
            f"(ideal efficiency {ideal_efficiency(self):.3f}); a --total-steps that is a multiple of {n} avoids this"
        )

    def to_json(self) -> list[list[int]]:
        return [[r.start, r.stop] for r in self.ranges]


def partition_steps(total_steps: int, num_stages: int, weights: Sequence[float] | None = None) -> StepPlan:
    """Split steps 0..T-1 into N contiguous ranges.

    Without weights the split is balanced: sizes differ by at most one, and the extra steps go
    to the first stages (equal ranges whenever N divides T). With weights, stage k's share is
    proportional to weights[k] (a stage that also encodes or decodes can be given less), rounded
    by largest remainder; every stage still gets at least one step.
    """
    if num_stages <= 0:
        raise ValueError(f"stages({num_stages}) must be positive")
    if total_steps < num_stages:
        raise ValueError(f"stages({num_stages}) > steps({total_steps}): every stage needs at least one step")
    if weights is None:
        base, extra = divmod(total_steps, num_stages)
        sizes = [base + (1 if k < extra else 0) for k in range(num_stages)]
    else:
        sizes = _weighted_sizes(total_steps, list(weights), num_stages)
    return plan_from_sizes(sizes)


def plan_from_sizes(sizes: Sequence[int]) -> StepPlan:
    """Contiguous ranges with these sizes, in stage order (sizes must be >= 1)."""
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"partition {list(sizes)}: every stage needs at least one step")
    ranges, start = [], 0
    for size in sizes:
        ranges.append(range(start, start + size))
        start += size
    return StepPlan(total_steps=start, ranges=tuple(ranges))


def _weighted_sizes(total: int, weights: list[float], n: int) -> list[int]:
    if len(weights) != n:
        raise ValueError(f"weights({len(weights)}) != stages({n})")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights {weights} must all be positive")
    # One step each first, then the rest by largest remainder of the weighted share.
    rest = total - n
    scale = rest / sum(weights)
    shares = [w * scale for w in weights]
    sizes = [1 + math.floor(s) for s in shares]
    leftover = total - sum(sizes)
    order = sorted(range(n), key=lambda k: (-(shares[k] - math.floor(shares[k])), k))
    for k in order[:leftover]:
        sizes[k] += 1
    return sizes


def ideal_efficiency(plan: StepPlan) -> float:
    """Steady-state throughput of this plan relative to N x one stage, with equal step costs."""
    return plan.total_steps / (plan.num_stages * max(plan.sizes))


def ideal_pipeline_makespan(samples: int, plan: StepPlan, step_s: float) -> float:
    """Fill + steady state + drain: the first sample takes T steps, then one every max(sizes) steps."""
    if samples <= 0:
        return 0.0
    return (plan.total_steps + (samples - 1) * max(plan.sizes)) * step_s


def ideal_data_parallel_makespan(samples: int, workers: int, total_steps: int, step_s: float) -> float:
    """Each worker runs whole samples: ceil(S / N) samples of T steps each on the busiest worker."""
    if workers <= 0:
        raise ValueError(f"workers({workers}) must be positive")
    return math.ceil(samples / workers) * total_steps * step_s


def ideal_steady_throughput(plan: StepPlan, step_s: float) -> float:
    """Samples per second once the pipeline is full."""
    return 1.0 / (max(plan.sizes) * step_s)


def shard_samples(num_samples: int, workers: int, rank: int) -> range:
    """Contiguous shard of sample indices for data parallelism (as accelerate's split_between_processes)."""
    if not 0 <= rank < workers:
        raise ValueError(f"rank({rank}) outside 0..{workers - 1}")
    base, extra = divmod(num_samples, workers)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
