"""Calibration: every stage agrees on the steps it runs (--partition even | a,b,c | auto), and
for auto without known costs, each stage measures its own costs first.

auto needs every stage's costs before the first sample. They come from, in this order
(ppsvd.planner.known_costs for the first two):
1. --costs-from RUN_DIR: what an earlier run's timeline.json measured (rank 0 reads it);
2. the model's declared costs: the synthetic stand-in spends exactly what it was told to;
3. a calibration now: after every stage has loaded (the start barrier), each stage times its
   own work once on a throwaway input: one step, and prepare on stage 0 and finalize on the
   last stage. It runs it twice and keeps the faster, since a first call pays one-time set-up
   (kernel selection, allocations). The numbers go through the store; rank 0 plans
   (ppsvd.planner.choose_plan) and publishes the sizes; every stage waits for them.
Planning in one place (rank 0) and publishing the result, rather than every stage planning
from the same numbers, keeps one answer even if float rounding differed between hosts.

Nothing here touches a sample: the throwaway inputs come from their own generator (stage 0's
prepare of sample 0 seeds its own generator, as every prepare does), the scheduler is set
afresh by every run_steps call, and each step of every sample still runs exactly once, in
order, on one stage. So outputs are the same for any partition (the exactness tests check it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppsvd.backends.deadline import Deadline
from ppsvd.config import RunConfig
from ppsvd.models.base import synchronize
from ppsvd.planner import choose_plan, known_costs
from ppsvd.planning.costs import CostModel
from ppsvd.planning.steps import StepPlan, partition_steps, plan_from_sizes
from ppsvd.runtime.control import key

PLAN_KEY = "plan"
COSTS_KEY = "stage-costs"
CALIBRATION_REPEATS = 2


@dataclass(frozen=True)
class RunPlan:
    """The split this run uses, how it was asked for, and the cost model behind it (if any)."""

    plan: StepPlan
    mode: str
    costs: CostModel | None

    def costs_json(self) -> dict[str, Any] | None:
        return self.costs.to_json() if self.costs is not None else None


def needs_calibration(config: RunConfig, world: int) -> bool:
    """auto with a choice to make (N > 1 and T > N) and no costs known beforehand. The same
    answer on every rank (it depends only on the config), so all calibrate or none does."""
    if config.layout.strategy != "pipeline" or config.layout_plan(world).replicas > 1:  # only plain pipelines calibrate
        return False
    if config.layout.partition != "auto" or world == 1 or config.job.total_steps == world:
        return False
    if config.layout.costs_from:
        return False
    return known_costs(config) is None


def agree_on_plan(
    config: RunConfig, model, store, run_id: str, rank: int, world: int, cancelled: Callable[[], bool]
) -> RunPlan:
    """Every stage's call returns the same RunPlan (a collective: call it on every rank)."""
    total = config.job.total_steps
    stages = config.layout_plan(world).stages
    if stages == 1:  # data parallelism, a guidance pair: every rank runs all steps
        return RunPlan(partition_steps(total, 1), config.layout.partition, known_costs(config) if rank == 0 else None)
    if stages != world:  # hybrids: K stages per replica (or pair), split by known costs or evenly, without calibrating
        costs = known_costs(config) if config.layout.partition == "auto" or rank == 0 else None
        return RunPlan(choose_plan(config.layout.partition, total, stages, costs), config.layout.partition, costs)
    if config.layout.partition != "auto" or world == 1:  # no costs needed to know the split
        costs = known_costs(config) if rank == 0 else None
        return RunPlan(choose_plan(config.layout.partition, total, world, costs), config.layout.partition, costs)

    deadline = Deadline(config.transport.timeout_s, what="the partition plan", cancelled=cancelled)
    if needs_calibration(config, world):
        store.set(key(run_id, COSTS_KEY, rank), json.dumps(measure_stage(model)))
    if rank == 0:
        if needs_calibration(config, world):
            measured = [json.loads(_wait_get(store, key(run_id, COSTS_KEY, r), deadline)) for r in range(world)]
            costs = costs_from_calibration(measured)
        else:
            costs = known_costs(config)
        plan = choose_plan("auto", total, world, costs)
        run_plan = RunPlan(plan, "auto", costs)
        store.set(key(run_id, PLAN_KEY), json.dumps({"sizes": list(plan.sizes), "costs": run_plan.costs_json()}))
        return run_plan
    record = json.loads(_wait_get(store, key(run_id, PLAN_KEY), deadline))
    costs = CostModel.from_json(record["costs"]) if record["costs"] is not None else None
    return RunPlan(plan_from_sizes(record["sizes"]), "auto", costs)


def costs_from_calibration(measured: list[dict[str, float | None]]) -> CostModel:
    """Each stage's {step_s, prepare_s, finalize_s} -> one CostModel with per-stage speeds
    relative to the fastest stage (base costs are that device's)."""
    steps = [m["step_s"] for m in measured]
    fastest = min(steps)
    speeds = tuple(fastest / s for s in steps)
    prepare = (measured[0].get("prepare_s") or 0.0) * speeds[0]
    finalize = (measured[-1].get("finalize_s") or 0.0) * speeds[-1]
    return CostModel(fastest, prepare, finalize, speeds=speeds, source="calibrated at the start of this run")


def measure_stage(model, repeats: int = CALIBRATION_REPEATS) -> dict[str, float | None]:
    """This stage's own costs on a throwaway input: one step, plus prepare (stage 0) and finalize
    (last stage); the fastest of `repeats` tries of each."""
    step_index = model.plan.ranges[model.stage].start  # a step of its own (any step costs the same)
    best: dict[str, float | None] = {"step_s": None, "prepare_s": None, "finalize_s": None}
    for _ in range(repeats):
        if model.is_first:
            sample, took = _timed(model, model.prepare, 0)
            _keep(best, "prepare_s", took)
        else:
            sample = model.throwaway_sample()
        sample, took = _timed(model, model.run_steps, sample, range(step_index, step_index + 1))
        _keep(best, "step_s", took)
        if model.is_last:
            _, took = _timed(model, model.finalize, sample)
            _keep(best, "finalize_s", took)
    return best


def _timed(model, fn, *args):
    synchronize(model.device)
    start = time.perf_counter()
    result = fn(*args)
    synchronize(model.device)
    return result, time.perf_counter() - start


def _keep(best: dict[str, float | None], name: str, value: float) -> None:
    if best[name] is None or value < best[name]:
        best[name] = value


def _wait_get(store, name: str, deadline: Deadline) -> bytes:
    """store.get once `name` exists, polling in short slices that notice a stopping run."""
    while not store.check([name]):
        time.sleep(deadline.slice(0.01))
    return store.get(name)
