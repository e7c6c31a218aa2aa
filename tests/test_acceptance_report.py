"""benchmarks/acceptance_report.py, the Python half of the GPU acceptance script: its prerequisite
line and its report, run as the script runs them (a subprocess), on reports shaped like verify's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "acceptance_report.py"


def layout(name, strategy, *, ok=True, bitwise=True, diff=0.0, bound=None, rate=1.0, step=0.2, compile_s=None):
    return {
        "layout": name,
        "strategy": strategy,
        "ok": ok,
        "problem": None if ok else "latents differ",
        "claim": "bitwise" if bound is None else f"<= {bound:.0e} relative",
        "bound": bound,
        "latents_bitwise": bitwise,
        "max_relative_difference": diff,
        "frames_equal": True,
        "samples_per_sec": rate,
        "vs_diffusers": rate / 0.5,
        "median_step_s": step,
        "compile_s": compile_s,
    }


def report(layouts, shape):
    return {
        "ok": all(r["ok"] for r in layouts),
        "settings": {"dtype": "fp16", "latent_shape": shape, "total_steps": 16, "num_samples": 3},
        "reference": {"samples_per_sec": 0.5, "seconds_per_sample": [2.1, 2.0, 2.0]},
        "layouts": layouts,
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "diffusers": "0.42.1"},
    }


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_report_gathers_every_step_and_the_compile_speedup(tmp_path):
    (tmp_path / "steps.json").write_text(json.dumps({name: {"rc": 0, "seconds": 30} for name in ("doctor", "a", "b")}))
    (tmp_path / "doctor.json").write_text("{}")
    small = [
        layout("pipeline:1", "pipeline"),
        layout("pipeline:3:zmq", "pipeline"),
        layout("cfg:2:zmq", "cfg", bitwise=False, diff=3e-3, bound=2e-2),
    ]
    (tmp_path / "verify-layouts.json").write_text(json.dumps(report(small, [1, 4, 4, 32, 32])))
    big = [
        layout("pipeline:1", "pipeline", rate=0.30, step=0.165),
        layout(
            "pipeline:1:compile", "pipeline", bitwise=False, diff=4e-3, bound=2e-2, rate=0.36, step=0.13, compile_s=80
        ),
    ]
    (tmp_path / "verify-compile.json").write_text(json.dumps(report(big, [1, 4, 14, 64, 64])))
    proc = run("report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "acceptance.json").read_text())
    derived = summary["derived"]
    assert abs(derived["compile_vs_eager_throughput"] - 1.2) < 1e-9 and derived["compile_target_met"]
    assert abs(derived["compile_vs_eager_step"] - 0.165 / 0.13) < 1e-9
    assert derived["guidance_max_relative_difference"] == 3e-3
    table = (tmp_path / "acceptance.md").read_text()
    assert "| verify compile (fp16 1x4x14x64x64 T=16 S=3) | pipeline:1:compile |" in table
    assert "1.200x (target 1.15x: met)" in table and "NVIDIA H200" in table


def test_report_fails_when_a_step_failed_or_is_missing(tmp_path):
    (tmp_path / "steps.json").write_text(json.dumps({"doctor": {"rc": 0}, "verify-layouts": {"rc": 124}}))
    proc = run("report", str(tmp_path))
    assert proc.returncode == 1
    assert "did not produce a report" in (tmp_path / "acceptance.md").read_text()


def test_check_names_every_missing_prerequisite_in_one_line(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["torch>=2.0", "torch-nonexistent-ppsvd>=1.0", "rich>=999", '
        '"imageio-ffmpeg>=0.5.1"]\n'
    )
    proc = run("check", "--device", "cpu", "--pyproject", str(pyproject))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_acceptance: missing or too old: ")
    assert (
        "torch-nonexistent-ppsvd (none, need >=1.0)" in lines[0] and "rich " in lines[0] and "(need >=999)" in lines[0]
    )
    assert "imageio-ffmpeg" not in lines[0] and "torch (" not in lines[0] and ".whl/" in lines[0]
    assert run("check", "--device", "cpu").returncode == 0  # this test environment has every floor
