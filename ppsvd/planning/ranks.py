"""What each rank owns: its stage of its replica's plan, its guidance half, its samples, and
where a guidance pair cuts the decode.

The one place that reads a run's strategy and layout to say who does what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ppsvd.planning.layouts import Layout, strategy_layout
from ppsvd.planning.steps import StepPlan, partition_steps


@dataclass(frozen=True)
class RankWork:
    """What one rank does in a run: stage `stage` of `plan` (those steps of every sample it sees) for `samples`."""

    strategy: str
    rank: int
    plan: StepPlan
    """The plan this rank's model is built with: K stages of its replica's pipeline (for data: 1
    stage of all T steps)."""
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
