"""The planning choices that need a run's configuration: which costs are known, which split
`--partition` means, and which layout `--strategy auto` runs.

The arithmetic lives in ppsvd.planning (pure, no RunConfig); this module reads a RunConfig and
applies it. Used by the API (before a run), every stage (ppsvd.runtime.calibration) and
`ppsvd plan`, so each of them gets the same answer for the same config.
"""

from __future__ import annotations

from ppsvd.analysis.measured_costs import costs_from_run
from ppsvd.config import RunConfig, partition_sizes
from ppsvd.planning.costs import CFG_HALF_RATIO, CostModel, auto_split
from ppsvd.planning.layouts import Layout, LayoutCosts, LayoutForecast, rank_layouts
from ppsvd.planning.ranks import decode_split
from ppsvd.planning.steps import StepPlan, partition_steps, plan_from_sizes


def known_costs(config: RunConfig) -> CostModel | None:
    """Costs known without running anything: --costs-from, else the model's declared ones (the
    synthetic model's); None when only a calibration at the start of the run can tell."""
    if config.layout.costs_from:
        return costs_from_run(config.layout.costs_from)
    from ppsvd.models.base import model_class  # imports torch: only when the model must be asked

    return model_class(config).declared_costs(config)


def choose_plan(partition: str, total_steps: int, num_stages: int, costs: CostModel | None) -> StepPlan:
    """--partition -> the split: explicit sizes, even, or auto (planning.costs.auto_split: by
    cost, even when no costs are known; with T = N there is only one split to make)."""
    sizes = partition_sizes(partition)
    if sizes is not None:
        return plan_from_sizes(sizes)
    if partition == "auto":
        return auto_split(total_steps, num_stages, costs)
    return partition_steps(total_steps, num_stages)


def layout_costs(config: RunConfig, costs: CostModel | None) -> LayoutCosts:
    """The numbers layout predictions need, from the config: the given (or the synthetic
    model's declared) costs; the guidance half's step from --cfg-half-ms or the measured H200
    ratio; how a pair splits the decode chunks. None costs: relative units (step = 1)."""
    if costs is None:
        costs = CostModel(1.0, source="relative units (no costs known: step = 1)")
    b, _, f, _, _ = config.job.latent_shape
    rows = b * f
    cut = decode_split(rows, config.svd.decode_chunk_size or f)
    half = (
        config.synthetic.resolved_cfg_half_ms / 1000
        if config.model.is_synthetic and config.synthetic.step_ms
        else costs.step_s * CFG_HALF_RATIO
    )
    return LayoutCosts(costs, half, costs.handoff_s, max(cut, rows - cut) / rows, config.svd.uses_guidance)


def choose_layout(
    config: RunConfig, costs: CostModel | None, processes: int | None = None
) -> tuple[Layout, str, list[LayoutForecast]]:
    """--strategy auto: the best layout for --goal, a one-line reason, and every forecast (best first)."""
    n = config.layout.nproc if processes is None else processes
    goal = config.layout.goal
    costs_for_layouts = layout_costs(config, costs)
    forecasts = rank_layouts(n, config.job.total_steps, config.job.num_samples, goal, costs_for_layouts)
    best = forecasts[0]
    runner = forecasts[1] if len(forecasts) > 1 else None
    measure = "makespan" if goal == "throughput" else "per-video latency"

    def value(f: LayoutForecast) -> float:
        return f.makespan_s if goal == "throughput" else f.latency_s

    reason = (
        f"--strategy auto --goal {goal}: {best.layout.describe()} ({best.layout.name()}) predicts the shortest "
        f"{measure} for {config.job.num_samples} sample(s) on {n} processes, {value(best):.3g} s"
    )
    if runner is not None:
        reason += f" vs {value(runner):.3g} s for {runner.layout.describe()} ({runner.layout.name()})"
    return best.layout, reason + f"; costs: {costs_for_layouts.costs.describe()}", forecasts


def apply_layout(config: RunConfig, layout: Layout) -> RunConfig:
    """The config that runs `layout` (strategy, --pipeline-stages, --replicas set explicitly)."""
    strategy = "cfg" if layout.cfg else ("data" if layout.kind == "data" else "pipeline")
    return config.replace(strategy=strategy, pipeline_stages=layout.stages, replicas=layout.replicas)


def resolve_strategy(config: RunConfig, world_size: int | None = None) -> tuple[RunConfig, str | None]:
    """--strategy auto -> the config of the layout the cost model predicts best for --goal on
    `world_size` processes (default --nproc), and the one-line reason; any other strategy is
    returned as it is, with no reason. The same answer on every rank: it depends only on the config."""
    if config.layout.strategy != "auto":
        return config, None
    n = config.layout.nproc if world_size is None else world_size
    config = config.replace(nproc=n)
    config.validate()
    layout, reason, _ = choose_layout(config, known_costs(config))
    return apply_layout(config, layout), reason
