"""A run's timeline -> the ppsvd.planning.costs.CostModel it measured (for `--costs-from RUN_DIR`, the
run summary's estimates and the bench's predictions).

Per stage k, the median over its samples of one step's time (steps_s / steps) gives its device's
step cost; stage 0's prepare_s and the last stage's finalize_s give those costs (older timelines
without them: compute time minus steps, when the stage does only one of the two); the fastest
hand-off of each hop (nothing queued ahead) gives the transport's cost. Speeds are relative to
the fastest stage, so equal GPUs come out near 1 and the model's base costs are the fastest
device's.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

from ppsvd.analysis.timeline import RunTimeline, SampleSpan, StageTimeline
from ppsvd.errors import ConfigError
from ppsvd.planning.costs import CostModel

TIMELINE_NAME = "timeline.json"


def measured_costs(timeline: RunTimeline, *, source: str = "measured") -> CostModel | None:
    """The costs a finished run measured, or None when it has no sample to measure."""
    stages = [st for st in timeline.stages if st.samples]
    if not stages or len(stages) != len(timeline.stages):
        return None
    steps = [_median([step_time_s(span, st) for span in st.samples]) for st in stages]
    if any(v is None or v <= 0 for v in steps):
        return None
    if timeline.strategy == "data":
        # Every worker prepares and finalizes its own samples: the same costs on each device.
        first = last = stages
    else:
        first, last = stages[:1], stages[-1:]
    prepare = _median(
        [
            _prepare_s(span, st, alone=len(stages) == 1 and timeline.strategy == "pipeline")
            for st in first
            for span in st.samples
        ]
    )
    finalize = _median(
        [
            _finalize_s(span, st, alone=len(stages) == 1 and timeline.strategy == "pipeline")
            for st in last
            for span in st.samples
        ]
    )
    fastest = min(steps)
    speeds = tuple(fastest / v for v in steps)
    # Base (speed 1) costs: a stage of speed v measured cost/v.
    prepare_base = statistics.median([(prepare or 0.0) * speeds[stages.index(st)] for st in first])
    finalize_base = statistics.median([(finalize or 0.0) * speeds[stages.index(st)] for st in last])
    hops = [min(times) for times in handoff_times(timeline).values() if times]
    return CostModel(
        step_s=fastest,
        prepare_s=prepare_base,
        finalize_s=finalize_base,
        handoff_s=statistics.median(hops) if hops else 0.0,
        speeds=speeds if timeline.strategy == "pipeline" else (),
        source=source,
    )


def costs_from_run(run_dir: str | Path) -> CostModel:
    """`--costs-from RUN_DIR`: the costs an earlier run recorded; ConfigError (one line) if it cannot."""
    path = Path(run_dir).expanduser() / TIMELINE_NAME
    if not path.is_file():
        raise ConfigError(
            f"--costs-from {run_dir}: no {TIMELINE_NAME} there; point it at a finished run's directory (ppsvd-runs/...)"
        )
    try:
        timeline = RunTimeline.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--costs-from {run_dir}: {path} is not a ppsvd timeline ({type(exc).__name__}: {exc})"
        ) from None
    costs = measured_costs(timeline, source=f"measured by the run in {run_dir}")
    if costs is None:
        raise ConfigError(
            f"--costs-from {run_dir}: the run recorded no finished sample to take costs from; use a run that completed"
        )
    return costs


def span_steps(span: SampleSpan, stage: StageTimeline) -> int:
    """Steps a span ran: its own count when recorded, else the stage's range."""
    return span.steps or (stage.steps[1] - stage.steps[0])


def step_time_s(span: SampleSpan, stage: StageTimeline) -> float | None:
    """One step's time in this span: the steps' own time (steps_s, without prepare/encode or
    decode) / steps; compute time / steps for timelines that did not record steps_s."""
    steps = span_steps(span, stage)
    if steps <= 0:
        return None
    return (span.steps_s if span.steps_s is not None else span.compute_s) / steps


def handoff_times(timeline: RunTimeline) -> dict[tuple[int, int], list[float]]:
    """(src, dst) -> each sample's hand-off time over that pipeline hop (none for data).

    A hand-off is the receiver's `arrived` (its transport finished receiving) minus the sender's
    `send_start` (its compute loop handed the sample on); without `arrived` (older timelines)
    the receiver's recv_end stands in.
    """
    if timeline.strategy != "pipeline":
        return {}
    hops: dict[tuple[int, int], list[float]] = {}
    for src, dst in itertools.pairwise(timeline.stages):
        sent = {s.index: s.send_start for s in src.samples if s.send_start is not None}
        times = []
        for span in dst.samples:
            got = span.arrived if span.arrived is not None else span.recv_end
            if span.index in sent and got is not None:
                times.append(got - sent[span.index])
        hops[(src.stage, dst.stage)] = times
    return hops


def _prepare_s(span, stage: StageTimeline, *, alone: bool) -> float | None:
    if span.prepare_s is not None:
        return span.prepare_s
    return None if alone else _rest_s(span, stage)


def _finalize_s(span, stage: StageTimeline, *, alone: bool) -> float | None:
    if span.finalize_s is not None:
        return span.finalize_s
    return None if alone else _rest_s(span, stage)


def _rest_s(span, stage: StageTimeline) -> float | None:
    """Compute time that was not steps (older timelines record no prepare_s / finalize_s)."""
    if span.steps_s is None:
        return None
    return max(0.0, span.compute_s - span.steps_s)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
