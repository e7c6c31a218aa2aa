"""Pure cost model and planner: what a stage's work costs, the split of T steps that keeps the
slowest stage as fast as possible, and what a plan predicts.

No torch, no processes: seconds in, a StepPlan and predictions out. The run measures the costs
(ppsvd.runtime.calibration), reads them from an earlier run (ppsvd.analysis.measured_costs) or
takes them from the user (ppsvd.planner.known_costs decides which); this module only computes.

The model. Stage k of N runs n_k contiguous steps of every sample, on a device of relative
speed v_k (1 = the reference device). Per sample it spends

    t_k = (n_k x step_s + [k = 0] x prepare_s + [k = N-1] x finalize_s) / v_k

(prepare: stage 0 makes the initial state, e.g. SVD's image encode; finalize: the last stage
turns the final latent into outputs, e.g. the VAE decode). Hand-offs run in sender and receiver
threads beside the compute, so in steady state a result comes out every
period = max(max_k t_k, handoff_s), and one sample takes latency = sum_k t_k + (N-1) handoff_s.
S identical samples through a pipeline take latency + (S-1) period (a flow line: the slowest
stage works without a break once it has its first sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ppsvd.planning.steps import StepPlan, partition_steps, plan_from_sizes, shard_samples

CFG_HALF_RATIO = 114 / 162
"""A half-batch (one guidance half) UNet step over a full CFG step: measured on one H200, fp16,
SVD-XT at 14 frames 512x512 (114 ms vs 162 ms); the synthetic model's default --cfg-half-ms."""

UNEVEN_SPEEDS = 0.2
"""Stages whose speeds differ by more than this fraction of the fastest are flagged (CostModel.uneven_speeds)."""


def capped_efficiency(value: float | None) -> float | None:
    """An efficiency as reported: never above 1. A measured rate can exceed its estimated ideal by
    noise (the estimate's costs came from the same noisy run); 1 is the most any layout can give."""
    return None if value is None else min(value, 1.0)


@dataclass(frozen=True)
class CostModel:
    """What one sample's work costs on a reference device (speed 1), and each stage's speed."""

    step_s: float
    """One denoising step."""
    prepare_s: float = 0.0
    """Stage 0, once per sample: the initial state (SVD: CLIP + VAE encode of the image)."""
    finalize_s: float = 0.0
    """Last stage, once per sample: the outputs (SVD: VAE decode; writing runs in a thread beside it)."""
    handoff_s: float = 0.0
    """One hand-off between neighbouring stages (the transport, nothing queued)."""
    speeds: tuple[float, ...] = ()
    """Relative speed of each stage's device (2 = twice as fast); empty: all 1."""
    source: str = "explicit"
    """Where the numbers came from, in words (shown with every prediction)."""

    def __post_init__(self) -> None:
        values = {
            "step": self.step_s,
            "prepare": self.prepare_s,
            "finalize": self.finalize_s,
            "hand-off": self.handoff_s,
        }
        for name, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} cost {value} must be a finite number of seconds >= 0")
        if any(not math.isfinite(v) or v <= 0 for v in self.speeds):
            raise ValueError(f"stage speeds {list(self.speeds)} must all be positive")

    @staticmethod
    def from_ms(
        step_ms: float,
        encode_ms: float = 0.0,
        decode_ms: float = 0.0,
        speeds: Sequence[float] = (),
        *,
        source: str = "explicit",
    ) -> CostModel:
        """The user's numbers (ms), as `ppsvd plan` and `ppsvd simulate` take them (--step-ms,
        --encode-ms, --decode-ms, --stage-speed)."""
        return CostModel(step_ms / 1000, encode_ms / 1000, decode_ms / 1000, speeds=tuple(speeds), source=source)

    def speed(self, stage: int) -> float:
        return self.speeds[stage] if self.speeds else 1.0

    def for_stages(self, n: int) -> CostModel:
        """This model for N stages: per-stage speeds apply only when they were given for N
        devices; otherwise every device is taken to be the reference device."""
        if not self.speeds or len(self.speeds) == n:
            return self
        return CostModel(
            self.step_s,
            self.prepare_s,
            self.finalize_s,
            self.handoff_s,
            (),
            f"{self.source}; speeds of {len(self.speeds)} stages dropped for {n}",
        )

    def stage_s(self, stage: int, steps: int, num_stages: int) -> float:
        """t_k: stage `stage`'s time per sample when it runs `steps` steps (see the module docstring)."""
        work = steps * self.step_s
        if stage == 0:
            work += self.prepare_s
        if stage == num_stages - 1:
            work += self.finalize_s
        return work / self.speed(stage)

    def sample_s(self, total_steps: int, device: int = 0) -> float:
        """One whole sample (prepare, T steps, finalize) on one device: N = 1, or a data-parallel worker."""
        return (self.prepare_s + total_steps * self.step_s + self.finalize_s) / self.speed(device)

    def fastest_sample_s(self, total_steps: int, num_devices: int) -> float:
        """One whole sample on the fastest of `num_devices` devices alone: what a speedup is
        measured against (with equal speeds, any device)."""
        costs = self.for_stages(num_devices)
        return min(costs.sample_s(total_steps, k) for k in range(num_devices))

    def ideal_throughput(self, total_steps: int, num_devices: int) -> float:
        """The most `num_devices` devices of these speeds can give: the sum of what each would do
        alone (whole samples, at its own speed). With equal speeds: N x one device. An efficiency
        is measured against this, so stages of different speeds never make it exceed 1."""
        costs = self.for_stages(num_devices)
        rates = [costs.sample_s(total_steps, k) for k in range(num_devices)]
        return math.inf if any(r <= 0 for r in rates) else sum(1 / r for r in rates)

    def uneven_speeds(self, num_devices: int) -> str | None:
        """A note when the stages' speeds differ by more than UNEVEN_SPEEDS of the fastest, else None."""
        speeds = self.for_stages(num_devices).speeds
        if not speeds or (max(speeds) - min(speeds)) <= UNEVEN_SPEEDS * max(speeds):
            return None
        relative = ",".join(f"{v / max(speeds):.2f}" for v in speeds)
        return f"stage speeds differ by more than {UNEVEN_SPEEDS:.0%} ({relative} of the fastest)"

    def describe(self) -> str:
        """'step 33 ms, prepare 13 ms, finalize 98 ms, hand-off 0.4 ms, speeds 1,1,1,0.5 (explicit)'."""
        parts = [f"step {_ms(self.step_s)}", f"prepare {_ms(self.prepare_s)}", f"finalize {_ms(self.finalize_s)}"]
        if self.handoff_s:
            parts.append(f"hand-off {_ms(self.handoff_s)}")
        if self.speeds and len(set(self.speeds)) > 1:
            parts.append("speeds " + ",".join(f"{v:.3g}" for v in self.speeds))
        return f"{', '.join(parts)} ({self.source})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["speeds"] = list(self.speeds)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> CostModel:
        return CostModel(
            step_s=float(data["step_s"]),
            prepare_s=float(data.get("prepare_s", 0.0)),
            finalize_s=float(data.get("finalize_s", 0.0)),
            handoff_s=float(data.get("handoff_s", 0.0)),
            speeds=tuple(float(v) for v in data.get("speeds", ())),
            source=str(data.get("source", "recorded")),
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


def auto_split(total_steps: int, num_stages: int, costs: CostModel | None) -> StepPlan:
    """`--partition auto`: the contiguous split of T steps over N stages whose slowest stage is
    fastest under `costs` (exact); the even split when no costs are known. Every caller that
    means "auto" (the run's agreed plan, `ppsvd plan`, each replica of a layout prediction) comes here.

    Greedy marginal allocation: every stage starts with one step, and each further step goes to
    the stage whose time per sample stays lowest after taking it (ties: the earlier stage). For
    per-stage times that never decrease with more steps, this minimises the maximum exactly
    (the classic minimax resource allocation: if the greedy's bottleneck j got its last step
    when every other stage's next step would have cost at least as much, any split that gives
    no stage more than the greedy did sums to fewer than T steps). Ties go to the stage with
    fewer steps, then the earlier one, so equal (or zero) costs give the even split of
    partition_steps (10+9+9 for 28 over 3).
    """
    if num_stages <= 0:
        raise ValueError(f"stages({num_stages}) must be positive")
    if total_steps < num_stages:
        raise ValueError(f"stages({num_stages}) > steps({total_steps}): every stage needs at least one step")
    if costs is None:
        return partition_steps(total_steps, num_stages)
    costs = costs.for_stages(num_stages)
    sizes = [1] * num_stages
    for _ in range(total_steps - num_stages):
        k = min(range(num_stages), key=lambda s: (costs.stage_s(s, sizes[s] + 1, num_stages), sizes[s], s))
        sizes[k] += 1
    return plan_from_sizes(sizes)


@dataclass(frozen=True)
class Forecast:
    """What a plan predicts under a cost model, for S samples; and the same job data-parallel."""

    sizes: tuple[int, ...]
    stage_s: tuple[float, ...]
    """Each stage's time per sample, t_k."""
    bottleneck: int
    """The first stage with the longest t_k (it sets the pace)."""
    period_s: float
    """Steady state: one result every max(t_k, hand-off)."""
    throughput: float
    """1 / period_s, samples per second."""
    latency_s: float
    """One sample through every stage: sum t_k + (N-1) hand-offs."""
    single_s: float
    """One sample on the fastest device alone (N = 1 on that device; with equal speeds, any)."""
    speedup: float
    """throughput / (1 / single_s)."""
    efficiency: float
    """throughput / ideal_throughput (1 at N = 1 by definition): with equal speeds speedup / N."""
    num_samples: int
    pipeline_makespan_s: float
    """latency + (S - 1) period: fill, steady state and drain."""
    data_makespan_s: float
    """The same S samples data-parallel on the same N devices (contiguous shards): the busiest worker."""
    data_throughput: float
    """S / data_makespan_s."""
    costs: CostModel

    @property
    def num_stages(self) -> int:
        return len(self.sizes)

    @property
    def pipeline_throughput(self) -> float:
        """S / pipeline makespan: the whole job's rate, fill and drain included."""
        return self.num_samples / self.pipeline_makespan_s if self.pipeline_makespan_s > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["costs"] = self.costs.to_json()
        data["sizes"], data["stage_s"] = list(self.sizes), list(self.stage_s)
        data["pipeline_throughput"] = self.pipeline_throughput
        return data


def forecast(plan: StepPlan, costs: CostModel, num_samples: int) -> Forecast:
    """Predictions for running `plan` under `costs` (see the module docstring for the formulas)."""
    n, total = plan.num_stages, plan.total_steps
    costs = costs.for_stages(n)
    stage_s = tuple(costs.stage_s(k, size, n) for k, size in enumerate(plan.sizes))
    slowest = max(stage_s)
    period = max(slowest, costs.handoff_s if n > 1 else 0.0)
    latency = sum(stage_s) + (n - 1) * costs.handoff_s
    single = costs.fastest_sample_s(total, n)
    throughput = 1 / period if period > 0 else math.inf
    speedup = single / period if period > 0 else math.inf
    ideal = costs.ideal_throughput(total, n)
    samples = max(0, num_samples)
    data_mk = data_makespan(samples, total, costs, n)
    return Forecast(
        sizes=plan.sizes,
        stage_s=stage_s,
        bottleneck=stage_s.index(slowest),
        period_s=period,
        throughput=throughput,
        latency_s=latency,
        single_s=single,
        speedup=speedup,
        efficiency=1.0 if n == 1 else capped_efficiency(throughput / ideal if math.isfinite(ideal) else 1.0),
        num_samples=samples,
        pipeline_makespan_s=latency + (samples - 1) * period if samples else 0.0,
        data_makespan_s=data_mk,
        data_throughput=samples / data_mk if data_mk > 0 else math.inf,
        costs=costs,
    )


def data_makespan(num_samples: int, total_steps: int, costs: CostModel, workers: int) -> float:
    """Data parallelism on `workers` devices: worker k runs its contiguous shard of whole samples
    (shard_samples) at its own speed; the busiest worker sets the time."""
    costs = costs.for_stages(workers)
    return max(len(shard_samples(num_samples, workers, k)) * costs.sample_s(total_steps, k) for k in range(workers))
