"""Layouts: how N processes are arranged, and what each arrangement predicts for a job.

A layout is R replicas of a K-stage pipeline whose stages are one process or a guidance pair
(Layout below). Per replica, the cost model of ppsvd.planning.costs gives the split of the T
steps (auto_split) and its forecast; a guidance pair's stage runs each step as one guidance half
(half_step_s, plus the swap of the two noise predictions, exchange_s) and decodes its larger
share of the decode chunks. Replicas take samples from one work queue: whichever replica's first
stage is free takes the next sample, so a replica that completes one every P_r seconds after a
first one in L_r takes its share in that rhythm (list scheduling, simulated sample by sample).

Per layout: makespan of S samples, throughput S / makespan, and per-video latency (one video
through an idle replica, L). The goal 'throughput' takes the shortest makespan, 'latency' the
shortest per-video latency (ties: the other measure, then the simpler layout). `--strategy auto`
runs the best one (ppsvd.planner.choose_layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ppsvd.planning.costs import CostModel, auto_split, forecast

Goal = Literal["throughput", "latency"]
GOALS: tuple[str, ...] = get_args(Goal)
"""--goal: what `--strategy auto` minimises, the makespan of all samples or one video's latency."""

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


@dataclass(frozen=True)
class LayoutCosts:
    """The numbers a layout prediction needs: a full (CFG batch) step and the rest (CostModel),
    one guidance half's step, the pair's per-step swap, and how the decode splits over a pair."""

    costs: CostModel
    half_step_s: float
    exchange_s: float = 0.0
    decode_share: float = 0.5
    """The larger half's fraction of the decode when a pair splits it (1.0: one chunk, no split)."""
    guidance: bool = True
    """Classifier-free guidance is on; off, there is no guidance pair to make."""


@dataclass(frozen=True)
class LayoutForecast:
    layout: Layout
    sizes: tuple[int, ...]
    """Steps per stage of each replica's pipeline."""
    latency_s: float
    """One video through an idle replica (replica 0)."""
    period_s: float
    """A replica's steady pace: one video every period once it is full."""
    makespan_s: float
    """All S samples, first start to last completion."""
    samples: int
    shares: tuple[int, ...]
    """Samples each replica takes from the work queue."""

    @property
    def throughput(self) -> float:
        return self.samples / self.makespan_s if self.makespan_s > 0 else math.inf

    def row(self) -> dict[str, object]:
        return {
            "layout": self.layout.name(),
            "describe": self.layout.describe(),
            "steps": "+".join(map(str, self.sizes)),
            "latency_s": self.latency_s,
            "makespan_s": self.makespan_s,
            "throughput": self.throughput,
        }


def predict(layout: Layout, costs: LayoutCosts, total_steps: int, samples: int) -> LayoutForecast:
    """What `layout` predicts for S samples of T steps (see the module docstring)."""
    base = costs.costs
    speeds = base.speeds if len(base.speeds) == layout.processes else ()
    replicas = []
    for r in range(layout.replicas):
        # A stage's device is its slowest process (a pair waits for its slower half every step).
        stage_speeds = (
            tuple(min(speeds[layout.rank_of(r, k, h)] for h in range(layout.width)) for k in range(layout.stages))
            if speeds
            else ()
        )
        if layout.cfg:
            stage_costs = CostModel(
                costs.half_step_s + costs.exchange_s,
                base.prepare_s,
                base.finalize_s * costs.decode_share,
                base.handoff_s,
                stage_speeds,
                base.source,
            )
        else:
            stage_costs = CostModel(
                base.step_s, base.prepare_s, base.finalize_s, base.handoff_s, stage_speeds, base.source
            )
        plan = auto_split(total_steps, layout.stages, stage_costs)
        replicas.append(forecast(plan, stage_costs, 1))
    latency = [f.latency_s for f in replicas]
    period = [f.period_s for f in replicas]
    shares = [0] * layout.replicas
    finish = 0.0
    for _ in range(samples):  # the work queue: the replica whose first stage is free first takes the next
        r = min(range(layout.replicas), key=lambda r: (shares[r] * period[r], r))
        finish = max(finish, latency[r] + shares[r] * period[r])
        shares[r] += 1
    return LayoutForecast(layout, replicas[0].sizes, latency[0], period[0], finish, samples, tuple(shares))


def candidates(processes: int, total_steps: int, *, guidance: bool = True) -> list[Layout]:
    """Every layout of exactly `processes` processes (guidance pairs only with guidance on)."""
    return layouts_for(processes, total_steps, cfg_possible=guidance)


def rank(forecasts: Sequence[LayoutForecast], goal: str) -> list[LayoutForecast]:
    """Best first for the goal; ties go to the other measure, then to fewer moving parts."""
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r} is not one of {', '.join(GOALS)}")

    def simplicity(f: LayoutForecast) -> tuple[int, int, int]:
        return (int(f.layout.cfg), f.layout.stages, f.layout.replicas)

    def key(f: LayoutForecast):
        first, second = (f.makespan_s, f.latency_s) if goal == "throughput" else (f.latency_s, f.makespan_s)
        return (round(first, 9), round(second, 9), simplicity(f))

    return sorted(forecasts, key=key)


def rank_layouts(processes: int, total_steps: int, samples: int, goal: str, costs: LayoutCosts) -> list[LayoutForecast]:
    """Every layout of exactly `processes` processes, predicted for S samples of T steps, best
    first for the goal (guidance pairs only when guidance is on)."""
    return rank(
        [
            predict(layout, costs, total_steps, samples)
            for layout in candidates(processes, total_steps, guidance=costs.guidance)
        ],
        goal,
    )
