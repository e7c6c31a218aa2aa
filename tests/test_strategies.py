"""Layouts beyond one pipeline: guidance pairs, work-queue data parallelism, hybrids, --strategy auto."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.planner import choose_layout, layout_costs
from ppsvd.planning.costs import CostModel
from ppsvd.planning.layouts import Layout, LayoutCosts, predict
from ppsvd.planning.ranks import decode_split, rank_work
from ppsvd.runtime.launch import launch
from tests.helpers import read_latents, reference_latents, small_config

# The H200 costs of SVD-XT at 25 frames 576x1024 scaled by 1/10 (benchmarks/strategies.py).
H200_TENTH = dict(
    model="synthetic",
    step_ms=63.0,
    cfg_half_ms=34.0,
    encode_ms=13.0,
    decode_ms=210.0,
    latent_shape=(1, 4, 25, 8, 8),
    decode_chunk_size=1,
    total_steps=28,
)


# -- pure ------------------------------------------------------------------------------------------


def test_layout_places_ranks_pairs_next_to_each_other_and_lanes_along_stages():
    layout = Layout(replicas=2, stages=2, cfg=True)  # 8 = 2 replicas x 2 stages x 2 halves
    assert layout.processes == 8 and layout.kind == "hybrid" and layout.name() == "2xp2xcfg"
    assert [layout.position(r) for r in (0, 1, 2, 5, 7)] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    assert layout.lane_links() == ((0, 2), (1, 3), (4, 6), (5, 7))  # each half forwards its own copy
    assert layout.pair_links()[:2] == ((0, 1), (1, 0))
    works = [rank_work("cfg", 8, r, range(5), total_steps=10, layout=layout) for r in range(8)]
    assert [w.writes for w in works] == [False, False, True, False, False, False, True, False]
    assert works[3].label == "r0 stage 1 cond" and works[3].partner == 2 and works[3].takes_from_queue
    assert Layout(1, 4).lane_links() == ((0, 1), (1, 2), (2, 3)) and Layout(4, 1).kind == "data"


def test_decode_split_keeps_chunk_boundaries_and_balances_the_pair():
    assert decode_split(25, 1) == 12 and decode_split(25, 8) == 16 and decode_split(14, 14) == 14
    assert decode_split(3, 1) == 1 and decode_split(28, 14) == 14


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            dict(nproc=8, strategy="cfg", pipeline_stages=3),
            "--nproc 8 cannot run 1 replica x 3 stages x 2 (cfg) = 6 processes",
        ),
        (
            dict(nproc=8, strategy="pipeline", pipeline_stages=3),
            "--nproc 8 cannot run 1 replica x 3 stages = 3 processes",
        ),
        (dict(nproc=3, strategy="cfg"), "needs an even --nproc"),
        (dict(nproc=2, strategy="cfg", max_guidance_scale=1.0), "nothing to split"),
        (dict(nproc=4, strategy="data", pipeline_stages=2), "use --strategy pipeline --pipeline-stages 2 --replicas 2"),
    ],
)
def test_bad_layouts_are_one_line_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        RunConfig.from_options(**changes).validate()
    assert "\n" not in str(err.value)


def test_auto_picks_guidance_pairs_for_latency_and_a_throughput_layout_for_many_samples():
    costs = CostModel.from_ms(63, 13, 210)
    latency = RunConfig.from_options(**H200_TENTH, nproc=2, num_samples=1, goal="latency", strategy="auto").validate()
    layout, reason, forecasts = choose_layout(latency, costs)
    assert layout == Layout(1, 1, cfg=True) and "1 guidance pair (cfg)" in reason and "\n" not in reason
    cfg, single = forecasts[0], predict(Layout(1, 1), layout_costs(latency, costs), 28, 1)
    # 13 + 28 x 34 + 210 x 13/25 ms against 13 + 28 x 63 + 210 ms: the 0.53 with an even split
    assert (
        cfg.latency_s == pytest.approx(0.013 + 28 * 0.034 + 0.210 * 13 / 25) and cfg.latency_s / single.latency_s < 0.56
    )
    many = RunConfig.from_options(**H200_TENTH, nproc=4, num_samples=40, goal="throughput", strategy="auto").validate()
    layout, _, forecasts = choose_layout(many, costs)
    assert not layout.cfg and forecasts[0].makespan_s < min(f.makespan_s for f in forecasts if f.layout.cfg)
    assert layout == Layout(4, 1)  # 10 rounds of whole samples beat a pipeline's fill, drain and uneven stages


def test_work_queue_prediction_gives_a_slow_replica_fewer_samples():
    costs = LayoutCosts(CostModel.from_ms(10, speeds=(1, 1, 1, 0.5)), half_step_s=0.007)
    forecast = predict(Layout(4, 1), costs, total_steps=10, samples=35)
    assert forecast.shares == (10, 10, 10, 5) and forecast.makespan_s == pytest.approx(1.0)


# -- in processes (synthetic model) ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_work_queue_covers_every_index_once_under_a_6x_slower_worker(tmp_path, no_fault):
    # 6x slower (600 ms a sample against 100 ms): the slow worker takes fewer than a fixed shard's
    # 3 even when the fast ones start half a second late on a loaded machine.
    config = small_config(
        tmp_path, strategy="data", nproc=3, num_samples=9, total_steps=4, step_ms=25.0, stage_speed=(1.0, 1.0, 1 / 6)
    )
    result = launch(config)
    assert result.ok, result.error
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [s["index"] for s in manifest["samples"]] == list(range(9))  # every index, once, merged from 3 shards
    latents, reference = read_latents(result.run_dir), reference_latents(config)
    assert all(torch.equal(latents[i], reference[i]) for i in range(9))  # sample i is seed + i, whoever ran it
    timeline = json.loads((result.run_dir / "timeline.json").read_text())
    taken = [len(stage["samples"]) for stage in timeline["stages"]]
    assert sum(taken) == 9 and taken[2] < min(taken[:2])  # the slow worker took fewer (a fixed shard: 3 each)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "changes",
    [dict(strategy="pipeline", nproc=4, replicas=2, transport="gloo")],  # 2 replicas x 2 stages from one queue
)
def test_replicas_of_pipelines_equal_one_process(tmp_path, no_fault, changes):
    config = small_config(tmp_path, num_samples=5, decode_chunk_size=1, **changes)
    result = launch(config)
    assert result.ok, result.error
    latents, reference = read_latents(result.run_dir), reference_latents(config)
    assert sorted(latents) == list(range(5)) and all(torch.equal(latents[i], reference[i]) for i in range(5))


def test_cli_bad_layout_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppsvd",
            "simulate",
            "--nproc",
            "8",
            "--strategy",
            "cfg",
            "--pipeline-stages",
            "3",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "8 as" not in proc.stderr and "6 processes" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_auto_runs_guidance_pairs_for_one_video_on_two_processes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppsvd",
            "simulate",
            "--nproc",
            "2",
            "--strategy",
            "auto",
            "--goal",
            "latency",
            "--num-samples",
            "1",
            "--total-steps",
            "4",
            "--step-ms",
            "5",
            "--latent-shape",
            "1",
            "4",
            "2",
            "8",
            "8",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--strategy auto --goal latency: 1 guidance pair (cfg)" in proc.stdout
    (run_dir,) = list(tmp_path.iterdir())
    assert json.loads((run_dir / "timeline.json").read_text())["strategy"] == "cfg"
