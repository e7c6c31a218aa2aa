"""Pure planning: how T steps are split over N stages, and what an ideal run costs.

No torch, no processes: integers in, integers (or seconds) out, ValueError with the values.
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
    ranges, start = [], 0
    for size in sizes:
        ranges.append(range(start, start + size))
        start += size
    return StepPlan(total_steps=total_steps, ranges=tuple(ranges))


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


# -- layouts: how N processes are arranged ---------------------------------------------------------

LAYOUT_KINDS = ("pipeline", "data", "cfg", "hybrid")


@dataclass(frozen=True)
class Layout:
    """R replicas of a K-stage pipeline whose stages are W = 1 process, or W = 2 (a guidance pair).

    pipeline = 1 x K x 1, data = N x 1 x 1 (a work queue of whole samples), cfg = 1 x K x 2 (a
    pipeline of guidance pairs; K = 1: one pair), hybrid = R x K x W with R > 1 and K*W > 1.
    Rank r*K*W + k*W + h is half h of stage k of replica r: a pair is two neighbouring ranks.
    """

    replicas: int = 1
    stages: int = 1
    cfg: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.stages < 1:
            raise ValueError(f"layout {self.replicas} replicas x {self.stages} stages: both must be >= 1")

    @property
    def width(self) -> int:
        """Processes per stage: 2 for a guidance pair, else 1."""
        return 2 if self.cfg else 1

    @property
    def processes(self) -> int:
        return self.replicas * self.stages * self.width

    @property
    def kind(self) -> str:
        """'pipeline', 'data', 'cfg' or 'hybrid' (see the class docstring)."""
        if self.replicas > 1 and self.stages * self.width > 1:
            return "hybrid"
        if self.cfg:
            return "cfg"
        return "data" if self.replicas > 1 else "pipeline"

    @property
    def uses_queue(self) -> bool:
        """Several replicas take samples from one shared queue (data parallelism as a work queue)."""
        return self.replicas > 1

    def describe(self) -> str:
        """'4 stages', '8 workers', '1 guidance pair', '4 stages x 2 (cfg)', '2 replicas x 4 stages'."""
        stage = f"{self.stages} stage{'s' if self.stages != 1 else ''}"
        if self.kind == "data":
            return f"{self.replicas} workers"
        if self.cfg:
            body = "1 guidance pair" if self.stages == 1 else f"{stage} x 2 (cfg)"
        else:
            body = stage
        return body if self.replicas == 1 else f"{self.replicas} replicas x {body}"

    def name(self) -> str:
        """A short tag for file names and tables: 'p4', 'd8', 'cfg', 'p4xcfg', '2xp4', '2xcfg'."""
        if self.kind == "data":
            return f"d{self.replicas}"
        body = ("cfg" if self.stages == 1 else f"p{self.stages}xcfg") if self.cfg else f"p{self.stages}"
        return body if self.replicas == 1 else f"{self.replicas}x{body}"

    def position(self, rank: int) -> tuple[int, int, int | None]:
        """(replica, stage, half) of a rank; half is None outside guidance pairs."""
        if not 0 <= rank < self.processes:
            raise ValueError(f"rank({rank}) outside 0..{self.processes - 1}")
        replica, rest = divmod(rank, self.stages * self.width)
        stage, half = divmod(rest, self.width)
        return replica, stage, (half if self.cfg else None)

    def rank_of(self, replica: int, stage: int, half: int | None = None) -> int:
        return (replica * self.stages + stage) * self.width + (half or 0)

    def lane_links(self) -> tuple[tuple[int, int], ...]:
        """Every (sender, receiver) pipeline hop, the same list on every rank: stage k -> k+1 of
        the same replica and the same guidance half (each half of a pair forwards its own copy)."""
        halves = (0, 1) if self.cfg else (None,)
        return tuple(
            (self.rank_of(r, k, h), self.rank_of(r, k + 1, h))
            for r in range(self.replicas)
            for h in halves
            for k in range(self.stages - 1)
        )

    def pair_links(self) -> tuple[tuple[int, int], ...]:
        """Both directions of every guidance pair: (2j, 2j+1) and (2j+1, 2j)."""
        if not self.cfg:
            return ()
        return tuple(link for j in range(self.processes // 2) for link in ((2 * j, 2 * j + 1), (2 * j + 1, 2 * j)))


def layouts_for(processes: int, total_steps: int, *, cfg_possible: bool = True) -> list[Layout]:
    """Every layout that uses exactly `processes` processes (stages never exceed T), in a stable order."""
    found = []
    for cfg in (False, True) if cfg_possible else (False,):
        width = 2 if cfg else 1
        if processes % width:
            continue
        per_width = processes // width
        for stages in range(1, per_width + 1):
            if per_width % stages == 0 and stages <= total_steps:
                found.append(Layout(per_width // stages, stages, cfg))
    return found


# -- who does what: the one place that reads the strategy -------------------------------------------


@dataclass(frozen=True)
class RankWork:
    """What one rank does in a run: stage `stage` of `plan` (those steps of every sample it sees) for `samples`."""

    strategy: str
    rank: int
    plan: StepPlan
    """The plan this rank's model is built with: K stages of its replica's pipeline (1 stage of all T steps for data)."""
    stage: int
    samples: tuple[int, ...]
    """The samples it will see, in order; with a work queue (layout.uses_queue), the ones it may take from."""
    layout: Layout = Layout()
    replica: int = 0
    half: int | None = None
    """Guidance pairs: 0 computes the unconditional half of the CFG batch, 1 the conditional; None: both."""

    @property
    def steps(self) -> range:
        return self.plan.ranges[self.stage]

    @property
    def linked(self) -> bool:
        """It receives samples from and hands them to neighbour ranks (a pipeline of 2+ stages)."""
        return self.plan.num_stages > 1

    @property
    def paired(self) -> bool:
        """It exchanges noise predictions with its guidance partner every step."""
        return self.half is not None

    @property
    def partner(self) -> int | None:
        return None if self.half is None else self.rank ^ 1

    @property
    def takes_from_queue(self) -> bool:
        """Its samples come from the run's shared work queue, not a fixed list."""
        return self.layout.uses_queue

    @property
    def writes(self) -> bool:
        """It writes results: the last stage of its replica (the unconditional half of a pair)."""
        return self.stage == self.plan.num_stages - 1 and self.half in (None, 0)

    @property
    def writes_shard(self) -> bool:
        """Its results are a shard of the run's, merged at the end (several replicas), not all of them."""
        return self.layout.replicas > 1

    @property
    def label(self) -> str:
        """'stage k' in a pipeline, 'worker k' in data parallelism, 'r1 stage 2 cond' in hybrids."""
        kind = self.layout.kind
        if kind == "data":
            return f"worker {self.rank}"
        text = f"stage {self.stage}"
        if self.half is not None:
            text += " uncond" if self.half == 0 else " cond"
        return text if self.layout.replicas == 1 else f"r{self.replica} {text}"


def strategy_layout(strategy: str, world: int) -> Layout:
    """The layout a plain --strategy means on `world` processes (no --pipeline-stages/--replicas)."""
    if strategy == "pipeline":
        return Layout(1, world)
    if strategy == "data":
        return Layout(world, 1)
    if strategy == "cfg":
        if world % 2:
            raise ValueError(f"cfg needs an even number of processes, got {world}")
        return Layout(1, world // 2, cfg=True)
    raise ValueError(f"strategy({strategy!r}) is neither 'pipeline', 'data' nor 'cfg'")


def rank_work(
    strategy: str,
    world: int,
    rank: int,
    samples: Sequence[int],
    *,
    total_steps: int,
    plan: StepPlan | None = None,
    layout: Layout | None = None,
) -> RankWork:
    """Which steps and which samples rank `rank` of `world` owns.

    The layout (default: what `strategy` means on `world` processes) places the rank: stage k of
    its replica's K-stage `plan` (balanced when not given), half h of a guidance pair. With one
    replica it sees every sample in order; with several, its replica takes samples from the shared
    work queue (a free replica takes the next index), so `samples` are the ones it may take.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank({rank}) outside 0..{world - 1}")
    layout = layout if layout is not None else strategy_layout(strategy, world)
    if layout.processes != world:
        raise ValueError(f"layout {layout.describe()} uses {layout.processes} processes, not {world}")
    plan = plan if plan is not None else partition_steps(total_steps, layout.stages)
    if plan.num_stages != layout.stages:
        per = "ranks" if layout.kind == "pipeline" else "stages per replica"
        raise ValueError(f"plan of {plan.num_stages} stages for {layout.stages} {per}")
    replica, stage, half = layout.position(rank)
    return RankWork(strategy, rank, plan, stage, tuple(samples), layout, replica, half)


def decode_split(rows: int, chunk: int) -> int:
    """Where a guidance pair cuts the VAE decode of `rows` latent frames (B x F, flattened as
    diffusers' decode_latents does) that are decoded `chunk` at a time: the chunk boundary that
    leaves the two halves closest in size (ties: the smaller first part, for the half that also
    writes). The first part goes to half 0, the rest to half 1; `rows` when there is one chunk
    only (nothing to split without changing the video)."""
    if rows < 1 or chunk < 1:
        raise ValueError(f"rows({rows}) and chunk({chunk}) must be >= 1")
    cuts = range(chunk, rows, chunk)
    return min(cuts, key=lambda cut: (max(cut, rows - cut), cut)) if cuts else rows
