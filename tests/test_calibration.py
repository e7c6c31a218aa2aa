"""--partition in a run: the options' checks, the costs a plan uses (declared, measured at the start,
or read from an earlier run) and the agreement between stages; `ppsvd plan`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch

from ppsvd import planner
from ppsvd.analysis.measured_costs import costs_from_run, measured_costs
from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.models.base import build_stage_model
from ppsvd.models.synthetic import SyntheticStageModel
from ppsvd.planning.costs import CostModel
from ppsvd.planning.steps import partition_steps, plan_from_sizes
from ppsvd.runtime import calibration
from tests.helpers import reference_latents, small_config
from tests.test_metrics import pipeline_timeline


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"partition": "4,4", "nproc": 3}, "--partition 4,4 gives 2 stages"),
        ({"partition": "10,10,7", "nproc": 3}, "sum to 28"),
        ({"partition": "10,0,18", "nproc": 3}, "step counts >= 1"),
        ({"partition": "fast"}, "--partition 'fast'"),
        ({"partition": "14,14", "nproc": 2, "strategy": "data"}, "--strategy data"),
        ({"stage_speed": (1.0, 0.5), "nproc": 3}, "2 speeds for 3 stages"),
        ({"stage_speed": (1.0, 0.0), "nproc": 2}, "positive speeds"),
        ({"decode_ms": 5.0, "model": "tiny"}, "--decode-ms only applies to --model synthetic"),
        ({"encode_ms": -1.0}, "--encode-ms -1.0 is negative"),
    ],
)
def test_bad_partition_and_cost_options_name_the_value(changes, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        RunConfig.from_options(**changes).validate()


def test_choose_plan_for_each_mode():
    costs = CostModel.from_ms(33, 13, 98)
    assert planner.choose_plan("auto", 28, 2, costs).sizes == (15, 13)
    assert planner.choose_plan("even", 28, 2, costs).sizes == (14, 14)
    assert planner.choose_plan("1,2,25", 28, 3, None).sizes == (1, 2, 25)
    assert planner.choose_plan("auto", 28, 3, None).sizes == (10, 9, 9)  # nothing known: even


def test_calibration_times_a_stage_without_touching_its_samples(tmp_path):
    config = small_config(tmp_path, nproc=2, step_ms=4.0, decode_ms=20.0, num_samples=2)
    plan = partition_steps(28, 2)
    last = build_stage_model(config, plan, 1, torch.device("cpu"))
    measured = calibration.measure_stage(last)
    assert 0.004 <= measured["step_s"] < 0.02 and 0.02 <= measured["finalize_s"] < 0.05
    assert measured["prepare_s"] is None
    first = build_stage_model(config, plan, 0, torch.device("cpu"))
    assert calibration.measure_stage(first)["prepare_s"] is not None
    # after calibrating, both stages still compute exactly what one process does
    want = reference_latents(small_config(tmp_path, num_samples=2))
    for index in range(2):
        sample = last.run_steps(first.run_steps(first.prepare(index), plan.ranges[0]), plan.ranges[1])
        assert torch.equal(last.finalize(sample).latents, want[index])


def test_calibrated_costs_are_relative_to_the_fastest_stage():
    costs = calibration.costs_from_calibration(
        [
            {"step_s": 0.02, "prepare_s": 0.01, "finalize_s": None},
            {"step_s": 0.04, "prepare_s": None, "finalize_s": 0.2},
        ]
    )
    assert costs.step_s == 0.02 and costs.speeds == (1.0, 0.5)
    assert costs.finalize_s == pytest.approx(0.1)  # measured at half speed: 0.1 s on the fastest
    assert costs.stage_s(1, 3, 2) == pytest.approx(0.32)  # (3 x 0.02 + 0.1) / 0.5


class DictStore:
    """The slice of torch's Store that planning uses, shared by threads."""

    def __init__(self):
        self.data, self.lock = {}, threading.Lock()

    def set(self, name, value):
        with self.lock:
            self.data[name] = value.encode() if isinstance(value, str) else value

    def check(self, names):
        with self.lock:
            return all(n in self.data for n in names)

    def get(self, name):
        with self.lock:
            return self.data[name]


def test_stages_agree_on_one_measured_plan(tmp_path, monkeypatch):
    # Pretend the stand-in's costs are unknown, so the stages measure them, as an SVD's would be.
    monkeypatch.setattr(SyntheticStageModel, "declared_costs", staticmethod(lambda config: None))
    config = small_config(tmp_path, nproc=3, total_steps=12, step_ms=3.0, decode_ms=30.0)
    assert calibration.needs_calibration(config, 3)
    store, results = DictStore(), {}
    models = [build_stage_model(config, partition_steps(12, 3), k, torch.device("cpu")) for k in range(3)]

    def stage(k):
        results[k] = calibration.agree_on_plan(config, models[k], store, "run", k, 3, lambda: False)

    threads = [threading.Thread(target=stage, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    stage(0)
    for t in threads:
        t.join(10)
    plans = {k: r.plan.sizes for k, r in results.items()}
    assert plans[0] == plans[1] == plans[2] and sum(plans[0]) == 12
    assert plans[0][2] < plans[0][0]  # 30 ms of decode: the last stage takes fewer steps
    assert results[0].costs.source == "calibrated at the start of this run"


def test_declared_costs_need_no_calibration(tmp_path):
    config = small_config(tmp_path, nproc=2, step_ms=33.0, encode_ms=13.0, decode_ms=98.0)
    assert not calibration.needs_calibration(config, 2)
    result = calibration.agree_on_plan(config, None, DictStore(), "run", 0, 2, lambda: False)
    assert result.plan.sizes == (15, 13) and result.costs == CostModel.from_ms(33, 13, 98, source=result.costs.source)


def test_costs_from_a_finished_run(tmp_path):
    pipeline_timeline().save(tmp_path / "timeline.json")
    costs = costs_from_run(tmp_path)
    assert costs == measured_costs(pipeline_timeline(), source=costs.source) and str(tmp_path) in costs.source
    with pytest.raises(ConfigError, match="no timeline.json"):
        costs_from_run(tmp_path / "nowhere")


def test_plan_command_json_and_costs_from(tmp_path):
    pipeline_timeline().save(tmp_path / "timeline.json")
    cmd = [
        sys.executable,
        "-m",
        "ppsvd",
        "plan",
        "--nproc",
        "7",
        "--step-ms",
        "165",
        "--encode-ms",
        "65",
        "--decode-ms",
        "490",
        "--json",
    ]
    data = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)
    assert sum(data["plan"]["sizes"]) == 28 and data["plan"]["efficiency"] > 0.85 > data["even"]["efficiency"]
    assert data["plan"]["pipeline_makespan_s"] > data["plan"]["data_makespan_s"]  # 10 samples on 7: data wins
    cmd = [sys.executable, "-m", "ppsvd", "plan", "--nproc", "2", "--total-steps", "4", "--costs-from", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "bottleneck" in proc.stdout and "data-parallel" in proc.stdout


def test_plan_from_sizes_is_contiguous():
    assert plan_from_sizes([1, 2, 25]).ranges == (range(0, 1), range(1, 3), range(3, 28))
