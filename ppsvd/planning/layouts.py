"""Pure: what every layout of N processes predicts for a job, and `--strategy auto`'s choice.

A layout (plan.Layout) is R replicas of a K-stage pipeline whose stages are one process or a
guidance pair. Per replica, the cost model of ppsvd.costs gives the split of the T steps and
its forecast; a guidance pair's stage runs each step as one guidance half (half_step_s, plus
the swap of the two noise predictions, exchange_s) and decodes its larger share of the decode
chunks. Replicas take samples from one work queue: whichever replica's first stage is free
takes the next sample, so a replica that completes one every P_r seconds after a first one in
L_r takes its share in that rhythm (list scheduling, simulated sample by sample).

Per layout: makespan of S samples, throughput S / makespan, and per-video latency (one video
through an idle replica, L). The goal 'throughput' takes the shortest makespan, 'latency' the
shortest per-video latency (ties: the other measure, then the simpler layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ppsvd.config import CFG_HALF_RATIO, GOALS, RunConfig
from ppsvd.planning.costs import CostModel, forecast, plan_steps
from ppsvd.errors import ConfigError
from ppsvd.planning.steps import Layout, decode_split, layouts_for


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

    @staticmethod
    def from_config(config: RunConfig, costs: CostModel | None) -> LayoutCosts:
        """The config's numbers: the synthetic model's declared costs or the given ones; the half
        step from --cfg-half-ms or the measured H200 ratio; None costs: relative units (step 1)."""
        if costs is None:
            costs = CostModel(1.0, source="relative units (no costs known: step = 1)")
        b, _, f, _, _ = config.job.latent_shape
        rows = b * f
        cut = decode_split(rows, config.svd.decode_chunk_size or f)
        half = (
            config.resolved_cfg_half_ms / 1000
            if config.is_synthetic and config.synthetic.step_ms
            else costs.step_s * CFG_HALF_RATIO
        )
        return LayoutCosts(costs, half, costs.handoff_s, max(cut, rows - cut) / rows, config.uses_guidance)


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
        plan = plan_steps(total_steps, layout.stages, stage_costs)
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
        raise ConfigError(f"--goal {goal!r} is not one of {', '.join(GOALS)}")

    def simplicity(f: LayoutForecast) -> tuple[int, int, int]:
        return (int(f.layout.cfg), f.layout.stages, f.layout.replicas)

    def key(f: LayoutForecast):
        first, second = (f.makespan_s, f.latency_s) if goal == "throughput" else (f.latency_s, f.makespan_s)
        return (round(first, 9), round(second, 9), simplicity(f))

    return sorted(forecasts, key=key)


def choose(
    config: RunConfig, costs: CostModel | None, processes: int | None = None
) -> tuple[Layout, str, list[LayoutForecast]]:
    """--strategy auto: the best layout for --goal, a one-line reason, and every forecast (best first)."""
    n = config.layout.nproc if processes is None else processes
    layout_costs = LayoutCosts.from_config(config, costs)
    forecasts = rank(
        [
            predict(layout, layout_costs, config.job.total_steps, config.job.num_samples)
            for layout in candidates(n, config.job.total_steps, guidance=layout_costs.guidance)
        ],
        config.layout.goal,
    )
    best = forecasts[0]
    runner = forecasts[1] if len(forecasts) > 1 else None
    measure = "makespan" if config.layout.goal == "throughput" else "per-video latency"
    value = (lambda f: f.makespan_s) if config.layout.goal == "throughput" else (lambda f: f.latency_s)
    reason = (
        f"--strategy auto --goal {config.layout.goal}: {best.layout.describe()} ({best.layout.name()}) predicts the shortest "
        f"{measure} for {config.job.num_samples} sample(s) on {n} processes, {value(best):.3g} s"
    )
    if runner is not None:
        reason += f" vs {value(runner):.3g} s for {runner.layout.describe()} ({runner.layout.name()})"
    return best.layout, reason + f"; costs: {layout_costs.costs.describe()}", forecasts


def apply(config: RunConfig, layout: Layout) -> RunConfig:
    """The config that runs `layout` (strategy, --pipeline-stages, --replicas set explicitly)."""
    strategy = "cfg" if layout.cfg else ("data" if layout.kind == "data" else "pipeline")
    return config.replace(strategy=strategy, pipeline_stages=layout.stages, replicas=layout.replicas)
