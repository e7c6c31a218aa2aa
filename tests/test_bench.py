"""The sweep logic with a fake launcher (no processes, no waiting), and one real end-to-end bench."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ppsvd.analysis.timeline import RunTimeline, SampleSpan, StageTimeline
from ppsvd.bench.options import default_gpu_counts
from ppsvd.bench.records import BenchPlan
from ppsvd.bench.report import CSV_NAME, JSON_NAME, THROUGHPUT_PNG, TIMELINE_PNG
from ppsvd.bench.sweep import SweepObserver, run_bench, run_note
from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.planning.steps import partition_steps, shard_samples

STEP_S = 0.5
LOAD_S = 2.0


def ideal_timeline(config: RunConfig, start: float) -> RunTimeline:
    """What a perfect run of config would record: no overhead, every step STEP_S, load LOAD_S."""
    n, t, s = config.layout.nproc, config.job.total_steps, config.job.num_samples
    ready = start + LOAD_S
    stages = []
    if config.layout.strategy == "pipeline":
        plan = partition_steps(t, n)
        d = max(plan.sizes) * STEP_S  # the bottleneck sets the pace of every stage
        for k, steps in enumerate(plan.ranges):
            spans = []
            for i in range(s):
                begin = ready + (i + k) * d
                span = SampleSpan(
                    index=i, compute_start=begin, compute_end=begin + len(steps) * STEP_S, steps=len(steps)
                )
                if k > 0:
                    span.recv_start = span.recv_end = span.arrived = begin
                if k < n - 1:
                    span.send_start = span.enqueued = span.compute_end
                spans.append(span)
            stages.append(
                StageTimeline(
                    stage=k,
                    steps=(steps.start, steps.stop),
                    launched=start,
                    ready=ready,
                    finished=spans[-1].compute_end,
                    samples=spans,
                )
            )
    else:
        for k in range(n):
            spans = [
                SampleSpan(
                    index=i, compute_start=ready + j * t * STEP_S, compute_end=ready + (j + 1) * t * STEP_S, steps=t
                )
                for j, i in enumerate(shard_samples(s, n, k))
            ]
            stages.append(
                StageTimeline(
                    stage=k,
                    steps=(0, t),
                    launched=start,
                    ready=ready,
                    finished=spans[-1].compute_end if spans else ready,
                    samples=spans,
                )
            )
    return RunTimeline(strategy=config.layout.strategy, total_steps=t, num_samples=s, run_start=start, stages=stages)


@dataclass
class FakeResult:
    ok: bool
    run_dir: Path
    wall_s: float
    error: str | None = None
    failed_stage: int | None = None


class FakeMachine:
    """A clock, a sleep and a launcher that share one fake time: a run takes load + work + 1 s."""

    def __init__(self, fail: set[tuple[int, str]] = frozenset(), crash: set[tuple[int, str]] = frozenset()):
        self.now = 100.0
        self.fail, self.crash = fail, crash
        self.launched: list[RunConfig] = []
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def launch(self, config: RunConfig, run_dir: Path) -> FakeResult:
        self.launched.append(config)
        key = (config.layout.nproc, config.layout.strategy)
        if key in self.crash:
            raise RuntimeError("launcher exploded")
        if key in self.fail:
            self.now += 3.0
            return FakeResult(
                ok=False, run_dir=run_dir, wall_s=3.0, error="stage 1 failed: out of memory", failed_stage=1
            )
        timeline = ideal_timeline(config, self.now)
        end = max(sp.compute_end for st in timeline.stages for sp in st.samples) + 1.0
        timeline.run_end = end
        run_dir.mkdir(parents=True, exist_ok=True)
        timeline.save(run_dir / "timeline.json")
        wall = end - self.now
        self.now = end
        return FakeResult(ok=True, run_dir=run_dir, wall_s=wall)


def base_config(**changes) -> RunConfig:
    values = {"model": "synthetic", "total_steps": 28, "num_samples": 10, "seed": 42, "device": "cpu"}
    values.update(changes)
    return RunConfig.from_options(**values)


def sweep(tmp_path, machine, *, gpus=(1, 2, 4), strategies=("pipeline",), fail_fast=False, cooldown=5.0, **config):
    plan = BenchPlan(
        base=base_config(**config),
        gpu_counts=tuple(gpus),
        strategies=tuple(strategies),
        cooldown_s=cooldown,
        fail_fast=fail_fast,
    ).validate(None)
    return run_bench(
        plan,
        tmp_path / "results",
        launcher=machine.launch,
        sleep=machine.sleep,
        clock=machine.clock,
        environment={"test": True},
        argv=["ppsvd", "bench"],
        plots=False,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the sweep -------------------------------------------------------------------------------


def test_sweep_runs_each_count_with_cooldowns_and_writes_csv(tmp_path):
    machine = FakeMachine()
    result = sweep(tmp_path, machine)
    assert [(c.layout.nproc, c.layout.strategy) for c in machine.launched] == [
        (1, "pipeline"),
        (2, "pipeline"),
        (4, "pipeline"),
    ]
    assert all(c.ui.show_progress is False for c in machine.launched)  # the sweep's bar is the only live display
    assert machine.slept == [5.0, 5.0]  # between runs, not after the last
    header = (tmp_path / "results" / CSV_NAME).read_text().splitlines()[0].split(",")
    assert header[:3] == ["gpu_count", "total_time_sec", "per_sample_sec"]
    rows = read_csv(tmp_path / "results" / CSV_NAME)
    assert [r["gpu_count"] for r in rows] == ["1", "2", "4"]
    # wall = load 2 s + work + 1 s; work = (S + N - 1) * (T/N) * t
    for row, n in zip(rows, (1, 2, 4), strict=True):
        work = (10 + n - 1) * (28 / n) * STEP_S
        assert float(row["total_time_sec"]) == pytest.approx(LOAD_S + work + 1.0, abs=1e-6)
        assert float(row["per_sample_sec"]) == pytest.approx((LOAD_S + work + 1.0) / 10, abs=1e-6)
        assert row["steps_per_gpu"] == str(28 // n)
        assert float(row["speedup"]) == pytest.approx(n, abs=1e-4)
        assert float(row["efficiency"]) == pytest.approx(1.0, abs=1e-4)
        assert row["status"] == "ok"
    assert result.failed == []


def test_pipeline_and_data_side_by_side(tmp_path):
    result = sweep(tmp_path, FakeMachine(), gpus=(1, 4), strategies=("pipeline", "data"))
    by = {(r.gpu_count, r.strategy): r for r in result.runs}
    assert list(by) == [(1, "pipeline"), (1, "data"), (4, "pipeline"), (4, "data")]
    # data at 4: shards 3+3+2+2, the busiest worker needs 3 x 28 x 0.5 s for 10 samples
    data4 = by[(4, "data")]
    assert data4.metrics.overall_throughput == pytest.approx(10 / (3 * 28 * STEP_S))
    assert data4.speedup == pytest.approx(10 / 3)  # vs 1 worker doing all 10: 10 x 14 s
    assert data4.efficiency == pytest.approx(10 / 12)
    assert data4.note.startswith("10 samples over 4 workers: about 3+3+2+2 each from the work queue")
    pipe4 = by[(4, "pipeline")]
    assert pipe4.efficiency == pytest.approx(1.0)
    assert pipe4.metrics.ideal_pipeline_makespan_s == pytest.approx(13 * 7 * STEP_S)
    assert pipe4.metrics.ideal_data_makespan_s == pytest.approx(3 * 28 * STEP_S)


def test_uneven_count_runs_with_a_partition_note(tmp_path):
    result = sweep(tmp_path, FakeMachine(), gpus=(1, 3), cooldown=0, partition="even")
    three = result.runs[1]
    assert three.ok and "10+9+9" in three.note and "bottleneck" in three.note
    assert three.metrics.steps_per_stage == [10, 9, 9]
    # the bottleneck's 10 steps set the pace: 28 / (3 x 10) of perfect scaling
    assert three.efficiency == pytest.approx(28 / 30)
    row = read_csv(tmp_path / "results" / CSV_NAME)[1]
    assert row["steps_per_gpu"] == "10+9+9" and "10+9+9" in row["note"]


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    machine = FakeMachine(fail={(2, "pipeline")}, crash={(4, "pipeline")})
    result = sweep(tmp_path, machine, gpus=(1, 2, 4, 7))
    assert [r.status for r in result.runs] == ["ok", "failed", "failed", "ok"]
    rows = read_csv(tmp_path / "results" / CSV_NAME)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "ok"]
    assert rows[1]["error"] == "stage 1 failed: out of memory"
    assert rows[1]["total_time_sec"] == "" and rows[1]["per_sample_sec"] == ""
    assert rows[2]["error"] == "RuntimeError: launcher exploded"
    data = json.loads((tmp_path / "results" / JSON_NAME).read_text())
    assert data["runs"][1]["status"] == "failed" and data["runs"][1]["failed_stage"] == 1
    assert data["runs"][1]["wall_s"] == pytest.approx(3.0)


def test_fail_fast_stops_and_marks_the_rest_skipped(tmp_path):
    machine = FakeMachine(fail={(2, "pipeline")})
    result = sweep(tmp_path, machine, gpus=(1, 2, 4), fail_fast=True)
    assert [r.status for r in result.runs] == ["ok", "failed", "skipped"]
    assert len(machine.launched) == 2
    assert [r["gpu_count"] for r in read_csv(tmp_path / "results" / CSV_NAME)] == ["1", "2"]
    data = json.loads((tmp_path / "results" / JSON_NAME).read_text())
    assert [r["status"] for r in data["runs"]] == ["ok", "failed", "skipped"]


def test_missing_timeline_is_a_failure(tmp_path):
    def launcher(config, run_dir):
        return FakeResult(ok=True, run_dir=run_dir, wall_s=1.0)

    plan = BenchPlan(base=base_config(), gpu_counts=(1,), cooldown_s=0).validate(None)
    result = run_bench(plan, tmp_path, launcher=launcher, environment={}, plots=False)
    assert result.runs[0].status == "failed"
    assert "timeline.json" in result.runs[0].error


def test_json_holds_config_environment_and_metrics(tmp_path):
    sweep(tmp_path, FakeMachine(), gpus=(1, 2))
    data = json.loads((tmp_path / "results" / JSON_NAME).read_text())
    assert data["config"]["job"]["total_steps"] == 28 and data["config"]["job"]["seed"] == 42
    assert data["environment"] == {"test": True}
    assert data["sweep"]["gpu_counts"] == [1, 2]
    assert data["csv_columns"][:3] == ["gpu_count", "total_time_sec", "per_sample_sec"]
    run = data["runs"][1]
    assert run["metrics"]["steady_throughput"] == pytest.approx(2 / (28 * STEP_S))  # N / (T t)
    assert len(run["metrics"]["stages"]) == 2 and len(run["metrics"]["hops"]) == 1


def test_observer_sees_every_run(tmp_path):
    seen = []

    class Recorder(SweepObserver):
        def starting(self, position, total, run):
            seen.append(("start", position, total, run.gpu_count))

        def cooling(self, seconds):
            seen.append(("cool", seconds))

        def finished(self, position, total, run):
            seen.append(("done", position, run.status))

    machine = FakeMachine()
    plan = BenchPlan(base=base_config(), gpu_counts=(1, 2), cooldown_s=1.5).validate(None)
    run_bench(
        plan,
        tmp_path,
        launcher=machine.launch,
        sleep=machine.sleep,
        clock=machine.clock,
        observer=Recorder(),
        environment={},
        plots=False,
    )
    assert seen == [("start", 0, 2, 1), ("done", 0, "ok"), ("cool", 1.5), ("start", 1, 2, 2), ("done", 1, "ok")]


# -- checks before anything runs -----------------------------------------------------------------


def test_counts_above_the_machine_are_refused_in_one_line():
    plan = BenchPlan(base=base_config(device="cuda"), gpu_counts=(1, 2, 4, 7))
    with pytest.raises(ConfigError) as info:
        plan.validate(4)
    message = str(info.value)
    assert "\n" not in message
    assert "7 GPUs" in message and "has 4" in message and "--gpus 1,2,4" in message


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"gpu_counts": (1, 1)}, "repeats"),
        ({"gpu_counts": ()}, "empty"),
        ({"cooldown_s": -1.0}, "--cooldown -1"),
        ({"gpu_counts": (1, 32)}, "--total-steps 28 is smaller than the number of stages \\(32\\)"),
    ],
)
def test_bad_plans_are_refused(changes, match):
    values = {"base": base_config(), "gpu_counts": (1, 2)}
    values.update(changes)
    with pytest.raises(ConfigError, match=match):
        BenchPlan(**values).validate(None)


def test_default_counts_fit_the_machine():
    assert default_gpu_counts("cuda", 8) == (1, 2, 4, 7)
    assert default_gpu_counts("cuda", 4) == (1, 2, 4)
    assert default_gpu_counts("cuda", 1) == (1,)
    assert default_gpu_counts("cpu", 0) == (1, 2, 4, 7)


def test_run_note():
    assert run_note(base_config(nproc=4)) is None
    assert "10+9+9" in run_note(base_config(nproc=3, partition="even"))
    assert run_note(base_config(nproc=3, partition="auto")) is None  # a chosen split, not a forced one
    assert run_note(base_config(nproc=5, strategy="data")) is None  # 10 samples split 2 each
    note = run_note(base_config(nproc=4, num_samples=2, strategy="data"))
    assert "1+1+0+0" in note and "2 worker(s) have nothing to do" in note


# -- the command -----------------------------------------------------------------------------------


def test_importing_the_command_imports_neither_torch_nor_matplotlib():
    code = "import sys, ppsvd.commands.bench; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_no_gpu_points_to_device_cpu(monkeypatch, capsys):
    from ppsvd.bench import options as bench
    from ppsvd.cli import main

    monkeypatch.setattr(bench, "visible_gpus", lambda: 0)
    with pytest.raises(SystemExit) as info:
        main(["bench"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err


def test_cli_refuses_more_gpus_than_the_machine_has(monkeypatch, capsys, tmp_path):
    from ppsvd.bench import options as bench
    from ppsvd.cli import main

    monkeypatch.setattr(bench, "visible_gpus", lambda: 4)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--gpus", "1,2,4,7", "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "asks for 7 GPUs but this machine has 4; use --gpus 1,2,4" in lines[0]
    assert not any(tmp_path.iterdir())  # refused before anything was created


def test_bad_strategy_and_gpus_are_one_line_errors(capsys):
    from ppsvd.cli import main

    for args, expected in (
        (["--strategy", "pipeline,tensor"], "'tensor' is not one of pipeline, data"),
        (["--gpus", "1,x"], "--gpus '1,x' must be comma-separated integers"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["bench", "--device", "cpu", *args])
        assert info.value.code == 2
        assert expected in capsys.readouterr().err


# -- the real thing, small -------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_bench_on_cpu(tmp_path):
    """A real sweep through `ppsvd bench`: worker processes, timelines, CSV, JSON and both PNGs.

    Two launches only: each costs seconds of process start-up on a small CPU machine (the data
    strategy's sweep logic is covered above with the fake launcher)."""
    args = [
        sys.executable,
        "-m",
        "ppsvd",
        "bench",
        "--device",
        "cpu",
        "--gpus",
        "1,2",
        "--strategy",
        "pipeline",
        "--total-steps",
        "4",
        "--num-samples",
        "3",
        "--latent-shape",
        "1",
        "4",
        "2",
        "8",
        "8",
        "--step-ms",
        "20",
        "--cooldown",
        "0",
        "--timeout",
        "60",
        "--no-progress",
        "--output-dir",
        str(tmp_path),
    ]
    started = time.monotonic()
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    (results,) = tmp_path.glob("bench-*")
    rows = read_csv(results / CSV_NAME)
    assert [(r["gpu_count"], r["strategy"], r["status"]) for r in rows] == [
        ("1", "pipeline", "ok"),
        ("2", "pipeline", "ok"),
    ]
    assert list(rows[0])[:3] == ["gpu_count", "total_time_sec", "per_sample_sec"]
    for row in rows:
        assert float(row["total_time_sec"]) > 0 and math.isfinite(float(row["samples_per_sec"]))
    assert float(rows[1]["speedup"]) > 1.2  # 2 stages of 2 x 20 ms beat 1 of 4 x 20 ms
    for name in (THROUGHPUT_PNG, TIMELINE_PNG):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((results / JSON_NAME).read_text())
    assert data["environment"]["device"] == "cpu" and len(data["runs"]) == 2
    assert data["runs"][1]["metrics"]["hops"][0]["median_s"] >= 0
    assert "scaling" in proc.stdout and "where the time went" in proc.stdout


def test_even_and_auto_partitions_side_by_side(tmp_path):
    plan = BenchPlan(
        base=base_config(),
        gpu_counts=(1, 2, 4),
        strategies=("pipeline", "data"),
        partitions=("even", "auto"),
        cooldown_s=0,
    ).validate(None)
    assert plan.runs() == [
        (1, "pipeline", "even"),
        (1, "data", "even"),
        (2, "pipeline", "even"),
        (2, "pipeline", "auto"),
        (2, "data", "even"),
        (4, "pipeline", "even"),
        (4, "pipeline", "auto"),
        (4, "data", "even"),
    ]
    machine = FakeMachine()
    result = run_bench(
        plan,
        tmp_path / "results",
        launcher=machine.launch,
        sleep=machine.sleep,
        clock=machine.clock,
        environment={"test": True},
        argv=["ppsvd", "bench"],
        plots=True,
    )
    assert [c.layout.partition for c in machine.launched] == [p for _, _, p in plan.runs()]
    rows = read_csv(tmp_path / "results" / CSV_NAME)
    assert [(r["gpu_count"], r["strategy"], r["partition"]) for r in rows] == [
        (str(n), s, p) for n, s, p in plan.runs()
    ]
    assert rows[3]["efficiency_basis"] == "measured 1-GPU run"
    assert Path(rows[3]["run_dir"]).name == "2gpu-pipeline-auto"
    data = json.loads((tmp_path / "results" / JSON_NAME).read_text())
    assert data["sweep"]["partitions"] == ["even", "auto"] and data["runs"][3]["partition"] == "auto"
    assert (tmp_path / "results" / THROUGHPUT_PNG).stat().st_size > 0
    assert result.files["throughput_png"] == str(tmp_path / "results" / THROUGHPUT_PNG)
    with pytest.raises(ConfigError, match="--partition"):
        BenchPlan(base=base_config(), gpu_counts=(1,), partitions=("14,14",)).validate(None)
