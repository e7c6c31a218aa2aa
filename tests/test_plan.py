import pytest

from ppsvd.planning.steps import (
    ideal_data_parallel_makespan,
    ideal_efficiency,
    ideal_pipeline_makespan,
    partition_steps,
    shard_samples,
)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_guide_counts_split_28_steps_evenly(n):
    plan = partition_steps(28, n)
    assert plan.sizes == (28 // n,) * n
    assert plan.is_even and plan.notice() is None
    assert [r.start for r in plan.ranges] == [k * 28 // n for k in range(n)]


def test_uneven_split_is_balanced_and_names_the_bottleneck():
    plan = partition_steps(28, 3)
    assert plan.sizes == (10, 9, 9)
    assert plan.ranges == (range(0, 10), range(10, 19), range(19, 28))
    assert plan.bottleneck == 0
    assert "stage 0 is the bottleneck" in plan.notice()
    assert ideal_efficiency(plan) == pytest.approx(28 / 30)


@pytest.mark.parametrize("t,n", [(5, 5), (28, 5), (25, 7), (100, 6), (7, 4)])
def test_partition_covers_every_step_once_in_order(t, n):
    plan = partition_steps(t, n)
    steps = [s for r in plan.ranges for s in r]
    assert steps == list(range(t))
    assert max(plan.sizes) - min(plan.sizes) <= 1
    assert all(plan.stage_of_step(s) == k for k, r in enumerate(plan.ranges) for s in r)


def test_fewer_steps_than_stages_is_an_error_with_the_values():
    with pytest.raises(ValueError, match=r"stages\(4\) > steps\(3\)"):
        partition_steps(3, 4)
    with pytest.raises(ValueError, match="stages"):
        partition_steps(3, 0)


def test_weighted_split_gives_encode_and_decode_stages_fewer_steps():
    plan = partition_steps(28, 4, weights=[0.5, 1, 1, 0.5])
    assert sum(plan.sizes) == 28
    assert plan.sizes[0] < plan.sizes[1] and plan.sizes[3] < plan.sizes[2]
    assert partition_steps(8, 4, weights=[1, 1, 1, 1]).sizes == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="weights"):
        partition_steps(8, 2, weights=[1])


def test_ideal_makespans_match_the_design_formulas():
    plan = partition_steps(28, 7)
    # (S + N - 1) * (T / N) * t
    assert ideal_pipeline_makespan(10, plan, 0.5) == pytest.approx((10 + 7 - 1) * 4 * 0.5)
    # ceil(S / N) * T * t
    assert ideal_data_parallel_makespan(10, 7, 28, 0.5) == pytest.approx(2 * 28 * 0.5)


def test_shards_are_contiguous_and_cover_all_samples():
    shards = [shard_samples(10, 4, r) for r in range(4)]
    assert [list(s) for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
