"""Timeline -> numbers: throughput, fill, drain, latency, utilisation, hand-off, ideal times.

Pure functions over a RunTimeline (ppsvd/analysis/timeline.py); no torch, no processes. Every number is
defined here once, and docs/benchmarking.md repeats the definitions in prose.

Notation: S samples, N stages (or data-parallel workers), T steps, c_i the completion time of
sample i (RunTimeline.completions(): the last stage's compute_end in a pipeline, the owning
worker's compute_end under data parallelism). All times are seconds, throughputs samples/s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ppsvd.analysis.measured_costs import handoff_times, measured_costs, step_time_s
from ppsvd.analysis.timeline import RunTimeline, StageTimeline
from ppsvd.planning.costs import CostModel, capped_efficiency, data_makespan, forecast
from ppsvd.planning.steps import StepPlan, partition_steps


@dataclass
class StageMetrics:
    """How one stage (pipeline) or worker (data) spent its time between ready and finished."""

    stage: int
    steps: tuple[int, int]
    """[start, stop) of the global steps it runs."""
    num_steps: int
    samples: int
    """Samples it handled."""
    load_s: float
    """ready - launched: model load and link setup."""
    window_s: float
    """finished - ready: the span the fractions below are measured over."""
    busy_s: float
    """Sum of compute_end - compute_start over its samples."""
    recv_wait_s: float
    """Sum of recv_end - recv_start: the compute loop blocked waiting for the previous stage's sample."""
    send_wait_s: float
    """Sum of enqueued - send_start: blocked on a full send queue (back-pressure); 0 on the last stage."""
    busy_frac: float | None
    """busy_s / window_s (None for an empty window)."""
    waiting_frac: float | None
    """(recv_wait_s + send_wait_s) / window_s. The rest, 1 - busy - waiting, is bookkeeping:
    the end-of-stream message, flushing the last sends or writes."""
    median_step_s: float | None
    """Median over its samples of one step's time (step_time_s)."""
    median_sample_s: float | None = None
    """Measured time per sample: median over its samples of compute_end - compute_start
    (prepare on stage 0, its steps, finalize on the last stage)."""
    predicted_sample_s: float | None = None
    """The plan's prediction of the same (ppsvd.planning.costs.Forecast.stage_s), when the run had a cost model."""


@dataclass
class HopMetrics:
    """The hand-off from stage `src` to stage `src + 1`, over all samples."""

    src: int
    dst: int
    median_s: float
    """Median over samples of the receiver's arrived - the sender's send_start. This includes
    queueing: a sample waits in the sender's queue while the receiver's inbox is full."""
    min_s: float
    """The fastest hand-off: the transport's cost with nothing queued ahead."""
    max_s: float
    """The slowest hand-off."""


@dataclass
class RunMetrics:
    """Everything `summarize` derives from one run's timeline (JSON-able with to_json)."""

    strategy: str
    num_stages: int
    total_steps: int
    num_samples: int
    completed: int
    """Samples with a completion time (== num_samples for a run that finished)."""
    steps_per_stage: list[int]
    partition: str
    """plan.describe(): '7+7+7+7', or '10+9+9 (stage 0 is the bottleneck ...)'; data: 'T each'."""
    wall_s: float | None
    """The whole launch (total_time_sec in benchmark_results.csv): run_end - run_start, or what the caller measured."""
    per_sample_s: float | None
    """wall_s / num_samples (per_sample_sec in benchmark_results.csv)."""
    model_load_s: float
    """max over stages of ready - launched."""
    compile_s: float | None
    """--compile: the longest stage's compilation (its warm-up UNet call), inside model_load_s and
    never in a throughput; None for an eager run."""
    startup_s: float
    """max over stages of ready - run_start: from the launch until every stage could work."""
    first_sample_latency_s: float | None
    """c_0 - compute_start of sample 0 on the stage that started it (stage 0 / its worker)."""
    fill_s: float
    """max over stages of the first compute_start - min over stages of the same: until every stage
    has started its first sample. In a pipeline: the last stage's first compute_start - stage 0's."""
    drain_s: float | None
    """max c_i - min over stages of the last compute_end: from the first stage running out of work
    until the last result. In a pipeline: last completion - stage 0's last compute_end."""
    compute_span_s: float | None
    """max c_i - the first compute_start anywhere: the makespan of the work itself (no load)."""
    steady_throughput: float | None
    """(S - 1) / (c_last - c_first) over sorted completions: the completion rate once the first
    sample is out (ideal pipeline: exactly N / (T t)). None when S < 2."""
    overall_throughput: float | None
    """S / compute_span_s: fill, steady state and drain together."""
    throughput: float | None
    """The headline rate used for speedup and efficiency: steady_throughput for a pipeline,
    overall_throughput under data parallelism (its completions come in bursts, so a
    completion-to-completion rate would mean nothing)."""
    latency_p50_s: float | None
    """Median per-sample latency: c_i - the compute_start of sample i on the stage that started it."""
    latency_p95_s: float | None
    """95th percentile (linear interpolation) of the same."""
    median_step_s: float | None
    """t: median over all (stage, sample) spans of the steps' own time / steps (compute time /
    steps where the steps' time was not recorded). Prepare and finalize are not steps."""
    single_stage_throughput: float | None
    """The 1-stage rate this run's speedup is relative to: 1 / (prepare + T x step + finalize)
    with the costs this run measured (`costs`), on its fastest stage's device; this run's own rate at N = 1."""
    speedup: float | None
    """throughput / single_stage_throughput (1 at N = 1). `ppsvd bench` replaces the estimate by a
    measured 1-GPU run (BenchRun.speedup)."""
    efficiency: float | None
    """throughput / the sum of what each stage's device would do alone (with equal speeds:
    speedup / N); never above 1; 1 at N = 1 by definition."""
    efficiency_basis: str
    """What the 1-stage rate is based on, in words."""
    predicted_throughput: float | None
    """What the run's plan predicted (the cost model in the timeline): 1 / the slowest stage's
    time for a pipeline, S / the data-parallel makespan for data. None without a cost model."""
    vs_plan: float | None
    """throughput / predicted_throughput: 1 when the run went exactly as planned."""
    ideal_pipeline_makespan_s: float | None
    """A pipeline of this partition with this run's measured costs and no other overhead:
    sum of the stage times + hand-offs, then one sample per slowest stage time (ppsvd.planning.costs)."""
    ideal_data_makespan_s: float | None
    """The busiest data-parallel worker with the same costs, N and S: shard size x one sample's time."""
    costs: dict[str, Any] | None = None
    """The ppsvd.planning.costs.CostModel this run measured (JSON), the basis of the estimates above."""
    planned_costs: dict[str, Any] | None = None
    """The cost model the run was planned with (timeline.costs), if any."""
    partition_mode: str = ""
    """--partition as asked: auto, even or sizes."""
    stages: list[StageMetrics] = field(default_factory=list)
    hops: list[HopMetrics] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def busy_fracs(self) -> list[float | None]:
        return [s.busy_frac for s in self.stages]

    @property
    def waiting_fracs(self) -> list[float | None]:
        return [s.waiting_frac for s in self.stages]


# -- small helpers --------------------------------------------------------------------------


SIMPLE_STRATEGIES = ("pipeline", "data")
"""Layouts whose per-stage costs predict the run (and a 1-process rate) directly; guidance pairs
and hybrids are predicted by ppsvd.planning.layouts before the run."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def plan_of(timeline: RunTimeline) -> StepPlan | None:
    """The pipeline's StepPlan as it actually ran (ranges from the timeline); None for data."""
    if timeline.strategy != "pipeline" or not timeline.stages:
        return None
    ranges = tuple(range(s.steps[0], s.steps[1]) for s in timeline.stages)
    return StepPlan(total_steps=timeline.total_steps, ranges=ranges)


def sample_starts(timeline: RunTimeline) -> dict[int, float]:
    """sample index -> the earliest compute_start of that sample (stage 0 / its worker)."""
    starts: dict[int, float] = {}
    for stage in timeline.stages:
        for span in stage.samples:
            if span.index not in starts or span.compute_start < starts[span.index]:
                starts[span.index] = span.compute_start
    return starts


def sample_latencies(timeline: RunTimeline) -> dict[int, float]:
    """sample index -> completion - start, for every completed sample."""
    starts = sample_starts(timeline)
    return {i: c - starts[i] for i, c in timeline.completions().items() if i in starts}


# -- per stage -------------------------------------------------------------------------------


def recv_wait_s(stage: StageTimeline) -> float:
    """Time the compute loop was blocked waiting for its next sample: sum of recv_end - recv_start
    (0 on stage 0 and data workers). A receiver thread fetches ahead, so this is ~0 in steady
    state and large on downstream stages during fill."""
    return sum(s.recv_end - s.recv_start for s in stage.samples if s.recv_start is not None and s.recv_end is not None)


def send_wait_s(stage: StageTimeline) -> float:
    """Time blocked on a full send queue: sum of enqueued - send_start (back-pressure from a
    slower next stage). 0 on a stage that sends nothing, and for spans that did not record it."""
    return sum(s.enqueued - s.send_start for s in stage.samples if s.send_start is not None and s.enqueued is not None)


def stage_metrics(stage: StageTimeline) -> StageMetrics:
    window = stage.finished - stage.ready
    busy = sum(s.compute_s for s in stage.samples)
    recv_w = recv_wait_s(stage)
    send_w = send_wait_s(stage)
    per_step = [v for v in (step_time_s(s, stage) for s in stage.samples) if v is not None]
    return StageMetrics(
        stage=stage.stage,
        steps=(stage.steps[0], stage.steps[1]),
        num_steps=stage.steps[1] - stage.steps[0],
        samples=len(stage.samples),
        load_s=stage.load_s,
        window_s=window,
        busy_s=busy,
        recv_wait_s=recv_w,
        send_wait_s=send_w,
        busy_frac=_ratio(busy, window),
        waiting_frac=_ratio(recv_w + send_w, window),
        median_step_s=statistics.median(per_step) if per_step else None,
        median_sample_s=statistics.median(s.compute_s for s in stage.samples) if stage.samples else None,
    )


def hop_metrics(timeline: RunTimeline) -> list[HopMetrics]:
    """One entry per pipeline hop k -> k+1 that carried at least one sample (none for data).

    Each sample's hand-off time is costs.handoff_times'. In steady state it is the transport's
    cost; when the next stage is behind (its inbox full) it also holds the time the sample
    queued, which is why min_s is kept beside the median.
    """
    return [
        HopMetrics(src=src, dst=dst, median_s=statistics.median(times), min_s=min(times), max_s=max(times))
        for (src, dst), times in handoff_times(timeline).items()
        if times
    ]


# -- the whole run ---------------------------------------------------------------------------


def summarize(timeline: RunTimeline, wall_s: float | None = None) -> RunMetrics:
    """All metrics of one run. `wall_s`: the launch's wall time if measured outside (as the benchmark
    does around torchrun); otherwise run_end - run_start from the timeline."""
    stages = timeline.stages
    n, s_total = len(stages), timeline.num_samples
    if wall_s is None and timeline.run_end is not None:
        wall_s = timeline.run_end - timeline.run_start
    done = sorted(timeline.completions().values())
    starts = sample_starts(timeline)
    latencies = sample_latencies(timeline)
    compute_span = done[-1] - min(starts.values()) if done and starts else None
    fill, drain = fill_and_drain(timeline)

    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else None
    overall = _ratio(len(done), compute_span)
    throughput = steady if timeline.strategy == "pipeline" else overall
    if throughput is None:  # one sample: the overall rate is all there is
        throughput = overall

    measured = measured_costs(timeline, source="measured in this run")
    planned = CostModel.from_json(timeline.costs) if timeline.costs else None
    single, run_speedup, run_efficiency, basis = scaling_estimate(timeline, throughput, measured)
    predicted, stage_predictions = prediction(timeline, planned)
    pipeline_mk, data_mk = ideal_makespans(timeline, measured)
    stage_list = [stage_metrics(st) for st in stages]
    for st, predicted_s in zip(stage_list, stage_predictions, strict=True):
        st.predicted_sample_s = predicted_s
    lat = list(latencies.values())
    return RunMetrics(
        strategy=timeline.strategy,
        num_stages=n,
        total_steps=timeline.total_steps,
        num_samples=s_total,
        completed=len(done),
        steps_per_stage=[st.steps[1] - st.steps[0] for st in stages],
        partition=describe_partition(timeline),
        wall_s=wall_s,
        per_sample_s=_ratio(wall_s, s_total),
        model_load_s=max((st.load_s for st in stages), default=0.0),
        compile_s=max((st.compile_s for st in stages if st.compile_s is not None), default=None),
        startup_s=max((st.ready - timeline.run_start for st in stages), default=0.0),
        first_sample_latency_s=latencies[min(latencies)] if latencies else None,
        fill_s=fill,
        drain_s=drain,
        compute_span_s=compute_span,
        steady_throughput=steady,
        overall_throughput=overall,
        throughput=throughput,
        latency_p50_s=percentile(lat, 50) if lat else None,
        latency_p95_s=percentile(lat, 95) if lat else None,
        median_step_s=median_step_s(timeline),
        single_stage_throughput=single,
        speedup=run_speedup,
        efficiency=run_efficiency,
        efficiency_basis=basis,
        predicted_throughput=predicted,
        vs_plan=_ratio(throughput, predicted),
        ideal_pipeline_makespan_s=pipeline_mk,
        ideal_data_makespan_s=data_mk,
        costs=measured.to_json() if measured is not None else None,
        planned_costs=timeline.costs,
        partition_mode=timeline.partition,
        stages=stage_list,
        hops=hop_metrics(timeline),
    )


def scaling_estimate(
    timeline: RunTimeline, throughput: float | None, measured: CostModel | None
) -> tuple[float | None, float | None, float | None, str]:
    """(1-stage rate, speedup, efficiency, basis) of one run with no 1-stage run beside it.

    At N = 1 the run is its own baseline (speedup and efficiency 1 by definition). Otherwise both
    come from the costs this run measured (ppsvd.costs): speedup = throughput / the fastest
    stage's device alone (prepare, all T steps and finalize per sample); efficiency = throughput /
    the sum of what every stage's device would do alone, so stages of different speeds compare
    against what they could give together, never N x one of them. Never above 1 (capped_efficiency,
    and the basis says when the measurement exceeded its estimate); stages whose speeds differ by
    more than 20 % are named in the basis.
    """
    n = len(timeline.stages)
    if n == 1:
        return throughput, 1.0, 1.0, "N = 1: this run is the baseline"
    if timeline.strategy not in SIMPLE_STRATEGIES:
        # A guidance half's step is not a full step: this run's costs say nothing exact about one process.
        return (
            None,
            None,
            None,
            f"a {timeline.strategy} layout: compare it with a 1-process run (`ppsvd plan` predicts both)",
        )
    if measured is None or throughput is None:
        return None, None, None, "no measured costs to estimate a 1-stage rate from"
    one = measured.fastest_sample_s(timeline.total_steps, n)
    ideal = measured.ideal_throughput(timeline.total_steps, n)
    if one <= 0 or not math.isfinite(ideal):
        return None, None, None, "no measured costs to estimate a 1-stage rate from"
    speedup_ = throughput * one
    raw = throughput / ideal
    basis = (
        f"1-stage rate estimated from this run's costs: prepare {measured.prepare_s * 1000:.1f} ms + "
        f"{timeline.total_steps} x step {measured.step_s * 1000:.1f} ms + finalize {measured.finalize_s * 1000:.1f} ms "
        f"= {one:.3f} s per sample on the fastest stage"
    )
    speeds = measured.for_stages(n).speeds
    if speeds and len(set(speeds)) > 1:
        basis += f"; ideal {ideal:.4g} samples/s = the sum of the {n} stages' own rates"
    uneven = measured.uneven_speeds(n)
    if uneven:
        basis += f"; {uneven}"
    basis += over_ideal_note(raw)
    return 1 / one, speedup_, capped_efficiency(raw), basis


def over_ideal_note(raw_efficiency: float | None) -> str:
    """What the basis adds when a measured rate exceeded its ideal (then shown as 100 %)."""
    if raw_efficiency is None or raw_efficiency <= 1.0:
        return ""
    return f"; measured {100 * (raw_efficiency - 1):.1f} % above this ideal (timing noise), shown as 100 %"


def prediction(timeline: RunTimeline, planned: CostModel | None) -> tuple[float | None, list[float | None]]:
    """(predicted throughput, predicted time per sample of each stage) under the run's cost model."""
    n = len(timeline.stages)
    if planned is None or n == 0 or timeline.strategy not in SIMPLE_STRATEGIES:
        return None, [None] * n  # guidance pairs and hybrids: ppsvd.planning.layouts predicts them before the run
    plan = plan_of(timeline)
    if plan is None:  # data: every worker runs whole samples
        mk = data_makespan(timeline.num_samples, timeline.total_steps, planned, n)
        per_sample = [planned.for_stages(n).sample_s(timeline.total_steps, k) for k in range(n)]
        return (timeline.num_samples / mk if mk > 0 else None), per_sample
    f = forecast(plan, planned, timeline.num_samples)
    return f.throughput, list(f.stage_s)


def ideal_makespans(timeline: RunTimeline, measured: CostModel | None) -> tuple[float | None, float | None]:
    """(pipeline makespan, data-parallel makespan) with this run's measured costs and nothing else.

    Both are given for either strategy (for the same N, S and T), so a run of one can be set
    beside what the other would ideally take. A data run is set beside the even split.
    """
    n, total, samples = len(timeline.stages), timeline.total_steps, timeline.num_samples
    if measured is None or n == 0:
        return None, None
    plan = plan_of(timeline)
    if plan is None and total >= n:
        plan = partition_steps(total, n)
    pipeline_mk = forecast(plan, measured, samples).pipeline_makespan_s if plan is not None else None
    return pipeline_mk, data_makespan(samples, total, measured, n)


def fill_and_drain(timeline: RunTimeline) -> tuple[float, float | None]:
    """Fill: from the first stage's first compute_start until every stage has begun its first
    sample. Drain: from the first stage to run out of work (stage 0 in a pipeline) until the
    last completion. Written over all stages, so the same definition serves data parallelism."""
    working = [st for st in timeline.stages if st.samples]
    if not working:
        return 0.0, None
    first_starts = [min(sp.compute_start for sp in st.samples) for st in working]
    last_ends = [max(sp.compute_end for sp in st.samples) for st in working]
    done = timeline.completions().values()
    drain = max(done) - min(last_ends) if done else None
    return max(first_starts) - min(first_starts), drain


def median_step_s(timeline: RunTimeline) -> float | None:
    """t: the median over all (stage, sample) spans of step_time_s."""
    per_step = [step_time_s(span, st) for st in timeline.stages for span in st.samples]
    per_step = [v for v in per_step if v is not None]
    return statistics.median(per_step) if per_step else None


def describe_partition(timeline: RunTimeline) -> str:
    plan = plan_of(timeline)
    if plan is not None:
        # The bottleneck by step count is news only for the even split; a chosen split names its sizes.
        return plan.describe() if timeline.partition in ("", "even") else "+".join(map(str, plan.sizes))
    # What each rank actually ran: data workers take samples from a queue, both halves of a
    # guidance pair run every sample of their pair.
    counts = [len(st.samples) for st in timeline.stages]
    return f"{timeline.total_steps} steps each, samples {'+'.join(map(str, counts))}"


# -- across a sweep --------------------------------------------------------------------------


def speedup(throughput: float | None, baseline: float | None) -> float | None:
    """throughput(N) / throughput(1)."""
    return _ratio(throughput, baseline)


def efficiency(throughput: float | None, baseline: float | None, n: int, speeds: Sequence[float] = ()) -> float | None:
    """throughput(N) / ideal(N), never above 1 (capped_efficiency): 1.0 is perfect scaling.

    ideal(N) = baseline x N for devices of equal speed. `speeds`: each stage's relative speed as
    the run measured it, stage 0 first (the baseline ran on stage 0's device); the ideal is then
    the sum of each device's own rate, baseline x sum(speeds) / speeds[0]."""
    return capped_efficiency(raw_efficiency(throughput, baseline, n, speeds))


def raw_efficiency(
    throughput: float | None, baseline: float | None, n: int, speeds: Sequence[float] = ()
) -> float | None:
    """efficiency() before the cap (to say when a measurement exceeded its ideal)."""
    if baseline is None or n <= 0:
        return None
    scale = sum(speeds) / speeds[0] if len(speeds) == n and speeds[0] > 0 else n
    return _ratio(throughput, scale * baseline)


def steps_per_gpu(sizes: Iterable[int]) -> str:
    """'7' when every GPU runs the same number of steps, '10+9+9' otherwise."""
    sizes = list(sizes)
    if not sizes:
        return ""
    return str(sizes[0]) if len(set(sizes)) == 1 else "+".join(map(str, sizes))
