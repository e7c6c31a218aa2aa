"""The cost-aware planner: optimal against brute force, predictions equal to hand computations."""

from __future__ import annotations

import itertools
import random

import pytest

from ppsvd.planning.costs import CostModel, auto_split, data_makespan, forecast
from ppsvd.planning.steps import partition_steps, plan_from_sizes


def compositions(total: int, parts: int):
    """Every way to write total as an ordered sum of `parts` integers >= 1."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def slowest(costs: CostModel, sizes) -> float:
    return max(costs.stage_s(k, n, len(sizes)) for k, n in enumerate(sizes))


def test_split_is_optimal_against_brute_force():
    rng = random.Random(9)
    cases = 0
    for _ in range(300):
        n = rng.randint(1, 5)
        total = rng.randint(n, 12)
        costs = CostModel(
            step_s=rng.choice([0.01, 0.033, 0.165, rng.uniform(0.001, 1)]),
            prepare_s=rng.choice([0.0, rng.uniform(0, 0.5)]),
            finalize_s=rng.choice([0.0, rng.uniform(0, 0.5), rng.uniform(0.5, 5)]),  # up to 30 steps' worth
            speeds=tuple(rng.choice([1.0, 1.0, 0.5, rng.uniform(0.2, 3)]) for _ in range(n))
            if rng.random() < 0.6
            else (),
        )
        plan = auto_split(total, n, costs)
        assert [s for r in plan.ranges for s in r] == list(range(total)), "every step once, in order"
        assert min(plan.sizes) >= 1
        best = min(slowest(costs, sizes) for sizes in compositions(total, n))
        assert slowest(costs, plan.sizes) == best, (total, n, costs, plan.sizes)
        cases += 1
    assert cases == 300


@pytest.mark.parametrize("total,n", [(28, 1), (28, 2), (28, 3), (28, 7), (25, 7), (5, 5), (100, 6)])
def test_equal_costs_give_the_even_split(total, n):
    assert auto_split(total, n, CostModel(step_s=0.02)).sizes == partition_steps(total, n).sizes
    assert (
        auto_split(total, n, CostModel(step_s=0.0)).sizes == partition_steps(total, n).sizes
    )  # nothing costs anything


def test_issue_profile_scaled_to_a_fifth_by_hand():
    # step 33 ms, encode 13 ms, decode 98 ms, T = 28, N = 2.
    costs = CostModel.from_ms(33, 13, 98)
    plan = auto_split(28, 2, costs)
    # 16+12 would give stage 0 13 + 16 x 33 = 541 ms; 15+13 gives 508 and 13 x 33 + 98 = 527 ms.
    assert plan.sizes == (15, 13)
    f = forecast(plan, costs, 40)
    assert f.stage_s == pytest.approx((0.508, 0.527))
    assert f.bottleneck == 1 and f.period_s == pytest.approx(0.527)
    assert f.throughput == pytest.approx(1 / 0.527)
    assert f.single_s == pytest.approx(0.013 + 28 * 0.033 + 0.098)  # 1.035 s on one device
    assert f.speedup == pytest.approx(1.035 / 0.527)
    assert f.efficiency == pytest.approx(1.035 / 0.527 / 2)
    assert f.latency_s == pytest.approx(1.035)
    assert f.pipeline_makespan_s == pytest.approx(1.035 + 39 * 0.527)
    assert f.data_makespan_s == pytest.approx(20 * 1.035)  # 20 samples per worker
    assert f.data_throughput == pytest.approx(40 / 20.7)


def test_h200_profile_even_split_is_decode_bound_and_auto_fixes_it():
    # The issue's H200 numbers: 165 ms steps, 65 ms encode, 490 ms decode, T = 28.
    costs = CostModel.from_ms(165, 65, 490)
    even = forecast(partition_steps(28, 7), costs, 10)
    assert even.stage_s[-1] == pytest.approx(4 * 0.165 + 0.49)  # 1150 ms: the bottleneck
    assert even.efficiency == pytest.approx(5.175 / (7 * 1.15))  # 64 %
    auto = forecast(auto_split(28, 7, costs), costs, 10)
    assert auto.sizes[-1] < 4 and auto.efficiency > 0.85
    assert forecast(auto_split(28, 4, costs), costs, 10).efficiency > 0.95
    assert forecast(partition_steps(28, 4), costs, 10).efficiency == pytest.approx(5.175 / (4 * (7 * 0.165 + 0.49)))


def test_slow_stage_gets_fewer_steps_and_speeds_scale_every_cost():
    costs = CostModel.from_ms(33, speeds=(1, 1, 1, 0.5))
    plan = auto_split(28, 4, costs)
    assert plan.sizes == (8, 8, 8, 4)  # 4 steps at half speed take as long as 8
    f = forecast(plan, costs, 10)
    assert f.stage_s == pytest.approx((0.264,) * 4)
    # against the sum of the four devices' own rates (3.5 x one full-speed device), not 4 x one
    assert f.efficiency == pytest.approx((1 / 0.264) / (3.5 / (28 * 0.033)))
    assert f.efficiency == pytest.approx(1.0) and f.speedup == pytest.approx(28 * 0.033 / 0.264)
    # a slow last device also decodes slowly
    assert CostModel.from_ms(10, 0, 100, (1, 0.5)).stage_s(1, 2, 2) == pytest.approx(0.24)
    # data parallelism: the half-speed worker's shard sets the time
    assert data_makespan(8, 28, costs, 4) == pytest.approx(2 * 28 * 0.033 / 0.5)


def test_handoff_adds_latency_and_can_set_the_pace():
    costs = CostModel(step_s=0.01, handoff_s=0.005)
    f = forecast(partition_steps(8, 4), costs, 3)
    assert f.latency_s == pytest.approx(0.08 + 3 * 0.005)
    assert f.period_s == pytest.approx(0.02)
    assert forecast(partition_steps(8, 4), CostModel(step_s=0.01, handoff_s=0.05), 3).period_s == pytest.approx(0.05)


def test_one_stage_efficiency_is_one_by_definition():
    f = forecast(partition_steps(28, 1), CostModel.from_ms(165, 65, 490), 5)
    assert f.efficiency == 1.0 and f.speedup == pytest.approx(1.0)
    assert f.pipeline_makespan_s == pytest.approx(5 * 5.175) == f.data_makespan_s


def test_speeds_for_another_stage_count_are_dropped_and_said():
    costs = CostModel.from_ms(33, speeds=(1, 0.5))
    assert costs.for_stages(4).speeds == () and "dropped" in costs.for_stages(4).source
    assert auto_split(8, 4, costs).sizes == (2, 2, 2, 2)


def test_bad_numbers_are_refused_with_the_value():
    with pytest.raises(ValueError, match="-1"):
        CostModel(step_s=-1)
    with pytest.raises(ValueError, match="speeds"):
        CostModel(step_s=1, speeds=(1, 0))
    with pytest.raises(ValueError, match="at least one step"):
        plan_from_sizes([3, 0])
    with pytest.raises(ValueError, match=r"stages\(4\) > steps\(3\)"):
        auto_split(3, 4, CostModel(step_s=1))


def test_cost_model_round_trips_json():
    costs = CostModel.from_ms(33, 13, 98, (1, 0.5), source="test")
    assert CostModel.from_json(costs.to_json()) == costs
    assert "step 33 ms" in costs.describe() and "speeds 1,0.5" in costs.describe()
