"""Every metric on hand-built timelines whose answers are known by construction.

Times are multiples of 0.5 s (exact in binary floating point), so expected values are exact
up to the rounding of a single division; pytest.approx with a 1e-12 tolerance checks them.
"""

from __future__ import annotations

import json

import pytest

from ppsvd.analysis.metrics import (
    efficiency,
    percentile,
    recv_wait_s,
    send_wait_s,
    speedup,
    steps_per_gpu,
    summarize,
)
from ppsvd.analysis.timeline import RunTimeline, SampleSpan, StageTimeline


def exact(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


# -- a 2-stage pipeline with a fill, a bubble and back-pressure --------------------------------
#
# T=4 steps (2 per stage), S=3 samples, every step 1 s, every hand-off 0.5 s.
#
#   time   5    7    9 10   12   14.5
#   st0    [s0 ][s1 ]x[s2 ]                 x = 9..10: blocked on a full send queue (bubble)
#   st1    ....[~][s0 ][~][s1 ][~][s2 ]     ~ = waiting for input (4 s of fill, then 0.5 s each)
#
# stage 0: launched 1, ready 3, finished 13; stage 1: launched 1, ready 3.5, finished 15.5.


def pipeline_timeline() -> RunTimeline:
    st0 = StageTimeline(
        stage=0,
        steps=(0, 2),
        launched=1.0,
        ready=3.0,
        finished=13.0,
        samples=[
            SampleSpan(
                index=0, compute_start=5.0, compute_end=7.0, send_start=7.0, enqueued=7.0, send_end=7.5, steps=2
            ),
            SampleSpan(
                index=1, compute_start=7.0, compute_end=9.0, send_start=9.0, enqueued=10.0, send_end=10.5, steps=2
            ),
            SampleSpan(
                index=2, compute_start=10.0, compute_end=12.0, send_start=12.0, enqueued=12.0, send_end=12.5, steps=2
            ),
        ],
    )
    st1 = StageTimeline(
        stage=1,
        steps=(2, 4),
        launched=1.0,
        ready=3.5,
        finished=15.5,
        samples=[
            SampleSpan(index=0, recv_start=3.5, recv_end=7.5, arrived=7.5, compute_start=7.5, compute_end=9.5, steps=2),
            SampleSpan(
                index=1, recv_start=9.5, recv_end=10.0, arrived=10.0, compute_start=10.0, compute_end=12.0, steps=2
            ),
            SampleSpan(
                index=2, recv_start=12.0, recv_end=12.5, arrived=12.5, compute_start=12.5, compute_end=14.5, steps=2
            ),
        ],
    )
    return RunTimeline(
        strategy="pipeline", total_steps=4, num_samples=3, run_start=0.0, run_end=20.0, stages=[st0, st1]
    )


def test_pipeline_completions_latency_fill_drain():
    m = summarize(pipeline_timeline())
    assert m.completed == 3
    # completions 9.5, 12, 14.5; sample starts on stage 0: 5, 7, 10
    assert m.first_sample_latency_s == exact(4.5)  # 9.5 - 5
    assert m.fill_s == exact(2.5)  # stage 1 first starts at 7.5, stage 0 at 5
    assert m.drain_s == exact(2.5)  # last completion 14.5 - stage 0's last compute_end 12
    assert m.compute_span_s == exact(9.5)  # 14.5 - 5
    # latencies 4.5, 5.0, 4.5 -> p50 4.5; p95 at rank 1.9 between 4.5 and 5.0
    assert m.latency_p50_s == exact(4.5)
    assert m.latency_p95_s == exact(4.95)


def test_pipeline_throughputs_and_ideal():
    m = summarize(pipeline_timeline())
    assert m.steady_throughput == exact(2 / 5)  # (3 - 1) / (14.5 - 9.5)
    assert m.overall_throughput == exact(3 / 9.5)
    assert m.throughput == m.steady_throughput  # a pipeline's headline is its steady rate
    assert m.median_step_s == exact(1.0)  # every span: 2 s for 2 steps
    # measured costs: step 1 s, nothing else per sample, fastest hand-off 0.5 s
    assert m.costs["step_s"] == exact(1.0) and m.costs["handoff_s"] == exact(0.5)
    assert m.single_stage_throughput == exact(0.25)  # one device: 4 steps x 1 s per sample
    assert m.speedup == exact(1.6) and m.efficiency == exact(0.8)  # 0.4 / 0.25, / 2 stages
    assert "estimated from this run's costs" in m.efficiency_basis
    assert m.predicted_throughput is None and m.vs_plan is None  # no cost model was recorded
    assert m.ideal_pipeline_makespan_s == exact(8.5)  # 2 + 0.5 + 2 for the first, then 2 each
    assert m.ideal_data_makespan_s == exact(8.0)  # ceil(3/2) x 4 x 1 s


def test_pipeline_wall_load_and_partition():
    m = summarize(pipeline_timeline())
    assert m.wall_s == exact(20.0)  # run_end - run_start
    assert m.per_sample_s == exact(20.0 / 3)
    assert m.model_load_s == exact(2.5)  # stage 1: 3.5 - 1
    assert m.startup_s == exact(3.5)
    assert m.steps_per_stage == [2, 2]
    assert m.partition == "2+2"
    # a wall time measured outside the launch wins over the timeline's
    assert summarize(pipeline_timeline(), wall_s=30.0).per_sample_s == exact(10.0)


def test_pipeline_stage_busy_and_waiting():
    tl = pipeline_timeline()
    s0, s1 = summarize(tl).stages
    # stage 0: window 13 - 3 = 10, busy 6, blocked on the send queue 1 (the 9 -> 10 bubble)
    assert send_wait_s(tl.stages[0]) == exact(1.0)
    assert recv_wait_s(tl.stages[0]) == 0.0
    assert (s0.window_s, s0.busy_s, s0.send_wait_s, s0.recv_wait_s) == (10.0, 6.0, 1.0, 0.0)
    assert s0.busy_frac == exact(0.6)
    assert s0.waiting_frac == exact(0.1)
    assert s0.load_s == exact(2.0)
    # stage 1: window 15.5 - 3.5 = 12, busy 6, waiting for input 4 + 0.5 + 0.5
    assert (s1.window_s, s1.busy_s, s1.recv_wait_s, s1.send_wait_s) == (12.0, 6.0, 5.0, 0.0)
    assert s1.busy_frac == exact(0.5)
    assert s1.waiting_frac == exact(5 / 12)
    assert s1.median_step_s == exact(1.0)


def test_pipeline_hops():
    (hop,) = summarize(pipeline_timeline()).hops
    # arrived - send_start: 7.5 - 7, 10 - 9, 12.5 - 12
    assert (hop.src, hop.dst) == (0, 1)
    assert hop.median_s == exact(0.5)
    assert hop.min_s == exact(0.5)
    assert hop.max_s == exact(1.0)


def test_hop_falls_back_to_recv_end_without_arrived():
    tl = pipeline_timeline()
    for span in tl.stages[1].samples:
        span.arrived = None
        span.recv_end += 0.5
    (hop,) = summarize(tl).hops
    assert hop.median_s == exact(1.0)  # recv_end - send_start: 1.0, 1.5, 1.0


# -- an ideal pipeline: the steady rate is exactly N / (T t) -----------------------------------


def ideal_pipeline(n: int, total_steps: int, samples: int, step_s: float) -> RunTimeline:
    """No overhead anywhere: stage k computes sample i during [(i + k) d, (i + k + 1) d], d = (T/N) t."""
    per = total_steps // n
    d = per * step_s
    stages = []
    for k in range(n):
        spans = []
        for i in range(samples):
            start = (i + k) * d
            span = SampleSpan(index=i, compute_start=start, compute_end=start + d, steps=per)
            if k > 0:
                span.recv_start = span.recv_end = span.arrived = start
            if k < n - 1:
                span.send_start = span.enqueued = span.send_end = start + d
            spans.append(span)
        stages.append(
            StageTimeline(
                stage=k,
                steps=(k * per, (k + 1) * per),
                launched=0.0,
                ready=0.0,
                finished=(samples + k) * d,
                samples=spans,
            )
        )
    return RunTimeline(strategy="pipeline", total_steps=total_steps, num_samples=samples, run_start=0.0, stages=stages)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_ideal_pipeline_reaches_n_over_t_t(n):
    t, total, samples = 0.5, 8, 6
    m = summarize(ideal_pipeline(n, total, samples, t))
    assert m.steady_throughput == exact(n / (total * t))
    assert m.speedup == exact(n) and m.efficiency == exact(1.0)
    assert m.fill_s == exact((n - 1) * (total / n) * t)
    assert m.drain_s == exact((n - 1) * (total / n) * t)
    assert m.first_sample_latency_s == exact(total * t)
    assert m.compute_span_s == exact(m.ideal_pipeline_makespan_s)  # (S + N - 1) (T/N) t
    assert m.wall_s is None and m.per_sample_s is None  # no run_end recorded, none given
    # stage k is busy S*d out of its window (S + k) d (it starts at 0 like every stage)
    d = (total / n) * t
    for k, st in enumerate(m.stages):
        assert st.busy_frac == exact(samples * d / ((samples + k) * d))


def test_ideal_pipeline_speedup_and_efficiency():
    t, total, samples = 0.5, 8, 6
    one = summarize(ideal_pipeline(1, total, samples, t)).throughput
    four = summarize(ideal_pipeline(4, total, samples, t)).throughput
    assert speedup(four, one) == exact(4.0)
    assert efficiency(four, one, 4) == exact(1.0)
    assert speedup(four, None) is None
    assert efficiency(four, 0.0, 4) is None


# -- data parallelism: two workers, uneven shards ----------------------------------------------
#
# T=4 steps of 1 s, S=3: worker 0 runs samples 0 and 1 back to back from 5, worker 1 runs
# sample 2 from 5.5. Completions 9, 13 (worker 0) and 9.5 (worker 1).


def data_timeline() -> RunTimeline:
    w0 = StageTimeline(
        stage=0,
        steps=(0, 4),
        launched=1.0,
        ready=3.0,
        finished=13.5,
        samples=[
            SampleSpan(index=0, compute_start=5.0, compute_end=9.0, steps=4),
            SampleSpan(index=1, compute_start=9.0, compute_end=13.0, steps=4),
        ],
    )
    w1 = StageTimeline(
        stage=1,
        steps=(0, 4),
        launched=1.5,
        ready=3.0,
        finished=10.0,
        samples=[SampleSpan(index=2, compute_start=5.5, compute_end=9.5, steps=4)],
    )
    return RunTimeline(strategy="data", total_steps=4, num_samples=3, run_start=0.0, run_end=16.0, stages=[w0, w1])


def test_data_parallel_metrics():
    m = summarize(data_timeline())
    assert m.completed == 3
    assert m.overall_throughput == exact(3 / 8)  # 3 samples over 13 - 5
    assert m.throughput == m.overall_throughput  # data's headline is the whole-run rate
    assert m.steady_throughput == exact(2 / 4)  # defined, but bursts make it meaningless here
    assert m.first_sample_latency_s == exact(4.0)
    assert m.latency_p50_s == exact(4.0) and m.latency_p95_s == exact(4.0)
    assert m.fill_s == exact(0.5)  # worker 1 starts 0.5 s after worker 0
    assert m.drain_s == exact(3.5)  # 13 - worker 1's last compute_end 9.5
    assert m.model_load_s == exact(2.0)
    assert m.median_step_s == exact(1.0)
    assert m.single_stage_throughput == exact(0.25)  # 4 steps x 1 s
    assert m.efficiency == exact(0.75)  # (3/8) / 0.25 / 2
    assert m.ideal_data_makespan_s == exact(8.0)  # ceil(3/2) x 4
    assert m.ideal_pipeline_makespan_s == exact(8.0)  # (4 + 2 x 2) x 1
    assert m.hops == []
    assert m.steps_per_stage == [4, 4]
    assert m.partition == "4 steps each, samples 2+1"
    w0, w1 = m.stages
    assert w0.busy_frac == exact(8 / 10.5) and w0.waiting_frac == exact(0.0)
    assert w1.busy_frac == exact(4 / 7) and w1.waiting_frac == exact(0.0)


# -- small pieces ------------------------------------------------------------------------------


def test_percentile_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 95) == exact(4.8)  # rank 3.8
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="q=101"):
        percentile(values, 101)


def test_one_stage_is_its_own_baseline_and_predictions_come_from_the_recorded_costs():
    tl = ideal_pipeline(1, 8, 4, 0.5)
    tl.costs = {"step_s": 0.4, "source": "test"}  # planned with 0.4 s steps; ran at 0.5 s
    m = summarize(tl)
    assert m.speedup == 1.0 and m.efficiency == 1.0 and "baseline" in m.efficiency_basis
    assert m.predicted_throughput == exact(1 / 3.2)
    assert m.vs_plan == exact(0.25 / (1 / 3.2))
    assert m.stages[0].predicted_sample_s == exact(3.2) and m.stages[0].median_sample_s == exact(4.0)


def test_single_sample_has_no_steady_rate():
    tl = ideal_pipeline(2, 4, 1, 1.0)
    m = summarize(tl)
    assert m.steady_throughput is None
    assert m.throughput == m.overall_throughput == exact(1 / 4)


def test_uneven_partition_is_described():
    tl = ideal_pipeline(2, 4, 2, 1.0)
    tl.total_steps = 5  # the same spans, relabelled as a 3+2 split of 5 steps
    tl.stages[0].steps = (0, 3)
    tl.stages[1].steps = (3, 5)
    m = summarize(tl)
    assert m.partition.startswith("3+2 (stage 0 is the bottleneck")
    assert m.steps_per_stage == [3, 2]


def test_step_time_uses_the_steps_own_time_when_recorded():
    tl = pipeline_timeline()
    # stage 0 spent 0.5 s of each 2 s preparing; its 2 steps took 1.5 s
    for span in tl.stages[0].samples:
        span.steps_s = 1.5
    m = summarize(tl)
    assert m.stages[0].median_step_s == exact(0.75)
    assert m.stages[1].median_step_s == exact(1.0)  # no steps_s: compute time / steps
    assert m.median_step_s == exact(0.875)  # median of 0.75 x3 and 1.0 x3
    # the 0.5 s that were not steps are stage 0's prepare; stage 1 is 0.75 times as fast
    assert m.costs["prepare_s"] == exact(0.5) and m.costs["step_s"] == exact(0.75)
    assert m.costs["speeds"] == [1.0, 0.75]
    # one sample alone: 3.5 s on stage 0's device, 3.5 / 0.75 s on stage 1's; the ideal is their rates' sum
    assert m.speedup == exact(0.4 * 3.5)  # against the fastest stage alone
    assert m.efficiency == exact(0.4 / (1 / 3.5 + 0.75 / 3.5))
    assert "sum of the 2 stages' own rates" in m.efficiency_basis
    assert "differ by more than 20" in m.efficiency_basis and "1.00,0.75" in m.efficiency_basis


def test_steps_per_gpu():
    assert steps_per_gpu([7, 7, 7, 7]) == "7"
    assert steps_per_gpu([10, 9, 9]) == "10+9+9"
    assert steps_per_gpu([]) == ""


def test_metrics_round_trip_json():
    m = summarize(pipeline_timeline())
    data = json.loads(json.dumps(m.to_json()))
    assert data["steady_throughput"] == m.steady_throughput
    assert data["stages"][1]["recv_wait_s"] == 5.0
    assert data["hops"][0]["median_s"] == 0.5


def test_timeline_file_round_trip(tmp_path):
    path = tmp_path / "timeline.json"
    pipeline_timeline().save(path)
    assert summarize(RunTimeline.load(path)) == summarize(pipeline_timeline())


def test_efficiency_is_never_above_one_and_says_when_it_was():
    """Results that came faster than the run's own step costs allow (timing noise in the estimate)
    are shown as 100 %, with the excess named in the basis."""
    tl = ideal_pipeline(2, 8, 6, 0.5)
    for stage in tl.stages:  # results 10 % closer together than the recorded 4 x 0.5 s steps allow
        for span in stage.samples:
            span.compute_start, span.compute_end = 0.9 * span.compute_start, 0.9 * span.compute_end
            span.steps_s = 2.0
    m = summarize(tl)
    assert m.efficiency == 1.0
    assert "above this ideal" in m.efficiency_basis and "shown as 100 %" in m.efficiency_basis
    assert efficiency(3.0, 1.0, 2) == 1.0  # across a sweep too


def test_sweep_efficiency_uses_the_sum_of_the_stage_speeds():
    """A 1-GPU baseline on stage 0's device and a second device half as fast: the ideal is 1.5 x it."""
    assert efficiency(1.5, 1.0, 2, speeds=(1.0, 0.5)) == exact(1.0)
    assert efficiency(1.2, 1.0, 2, speeds=(1.0, 0.5)) == exact(0.8)
    assert efficiency(1.2, 1.0, 2) == exact(0.6)  # equal speeds: 2 x the baseline


@pytest.mark.slow
def test_simulate_with_a_half_speed_stage_reports_an_honest_efficiency(tmp_path):
    """The issue's case: it printed 'efficiency 148.4 %' when the 1-stage rate was the slow stage's."""
    import os
    import re
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ppsvd", "simulate", "--nproc", "2", "--step-ms", "20", "--stage-speed", "0.5,1"]
    cmd += ["--num-samples", "12", "--total-steps", "12", "--latent-shape", "1", "4", "3", "8", "8"]
    cmd += ["--no-progress", "--output-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"efficiency (\d+\.\d)%", proc.stdout)
    assert found, proc.stdout
    assert 95.0 <= float(found.group(1)) <= 100.0, proc.stdout
    text = " ".join(proc.stdout.split())  # Rich wraps the basis over several lines
    assert "differ by more than 20%" in text and "sum of the 2 stages' own rates" in text
