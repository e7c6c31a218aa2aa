"""planning.ranks.rank_work: the one answer to "which steps and which samples does rank k own"; shapes.LatentShape."""

import pytest

from ppsvd.planning.ranks import rank_work
from ppsvd.planning.steps import partition_steps
from ppsvd.shapes import HANDOFF_LAYOUT, LatentShape


def test_pipeline_ranks_own_their_stage_of_every_sample():
    works = [rank_work("pipeline", 3, k, range(5), total_steps=10) for k in range(3)]
    assert [w.steps for w in works] == [range(0, 4), range(4, 7), range(7, 10)]
    assert all(w.samples == (0, 1, 2, 3, 4) and w.linked and not w.writes_shard for w in works)
    assert [w.label for w in works] == ["stage 0", "stage 1", "stage 2"]
    weighted = partition_steps(10, 2, weights=[1, 3])
    assert rank_work("pipeline", 2, 1, [7], total_steps=10, plan=weighted).steps == weighted.ranges[1]
    with pytest.raises(ValueError, match="plan of 2 stages for 3 ranks"):
        rank_work("pipeline", 3, 0, [0], total_steps=10, plan=weighted)


def test_data_ranks_own_all_steps_and_take_from_the_queue_and_a_single_rank_has_no_links():
    todo = [3, 4, 8, 9, 11]  # a resumed run: only these are left
    works = [rank_work("data", 2, k, todo, total_steps=28) for k in range(2)]
    assert [w.samples for w in works] == [
        tuple(todo)
    ] * 2  # a free worker takes the next of these (runtime/workqueue.py)
    assert all(
        w.steps == range(28) and w.stage == 0 and not w.linked and w.writes_shard and w.takes_from_queue for w in works
    )
    assert works[1].label == "worker 1"
    assert not rank_work("pipeline", 1, 0, todo, total_steps=28).linked
    with pytest.raises(ValueError, match="neither"):
        rank_work("tensor", 2, 0, todo, total_steps=28)


def test_latent_shape_hands_off_frames_before_channels():
    shape = LatentShape(1, 4, 14, 64, 64)
    assert shape == (1, 4, 14, 64, 64) and shape.text() == "1 4 14 64 64"
    assert shape.handoff() == (1, 14, 4, 64, 64) and shape.handoff(batch=2) == (2, 14, 4, 64, 64)
    assert dict(zip(HANDOFF_LAYOUT.split(), shape.handoff(), strict=True)) == {
        "B": 1,
        "F": 14,
        "C": 4,
        "H": 64,
        "W": 64,
    }
    assert shape.numel == 4 * 14 * 64 * 64
