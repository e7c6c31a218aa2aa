"""The two Python halves of benchmarks/gpu_acceptance.sh.

    python benchmarks/acceptance_report.py check [--device cuda]   # prerequisites: one line, exit 2, if any is missing
    python benchmarks/acceptance_report.py report OUT              # OUT/acceptance.json and OUT/acceptance.md

`check` reads ppsvd's dependency floors from pyproject.toml (one place for them) and names, in
one line, every package that is missing or older (imageio-ffmpeg excepted: the script writes no
MP4), and whether torch sees a CUDA GPU. `report` gathers what the script's steps wrote
(doctor.json, verify-layouts.json, verify-compile.json and their exit codes in steps.json) into one
JSON document and one Markdown table, and exits 1 unless every step passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_NEEDED = {"imageio-ffmpeg"}
"""Dependencies the acceptance run does not use (verify compares PNG frames and latents, no MP4)."""
COMPILE_TARGET = 1.15
"""--compile at N=1 should reach this many times the eager steady throughput (issue 21)."""


# -- check ------------------------------------------------------------------------------------


def missing_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """'name (none, need >=x)' or 'name y (need >=x)' for each dependency floor not met here."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.name in NOT_NEEDED:
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} (none, need {req.specifier})")
            continue
        if req.specifier and not req.specifier.contains(Version(installed).base_version, prereleases=True):
            problems.append(f"{req.name} {installed} (need {req.specifier})")
    return problems


def check(device: str, pyproject: Path = ROOT / "pyproject.toml") -> int:
    problems = missing_requirements(pyproject)
    try:
        import ppsvd  # noqa: F401  (the checkout on PYTHONPATH)
    except Exception as exc:  # noqa: BLE001 - whatever stops the import is the one line to print
        problems.append(f"ppsvd itself ({type(exc).__name__}: {exc}; put the checkout on PYTHONPATH)")
    if device == "cuda":
        try:
            import torch

            if not torch.cuda.is_available():
                problems.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
        except ImportError:
            pass  # already named as a missing requirement
    if problems:
        print(
            "gpu_acceptance: missing or too old: " + "; ".join(problems) + ". Carry their wheels in .whl/ "
            "(pip download commands in benchmarks/gpu_acceptance.sh's header and docs/benchmarking.md)",
            file=sys.stderr,
        )
        return 2
    return 0


# -- report -----------------------------------------------------------------------------------


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(out: Path) -> dict:
    """Everything the steps wrote, and the numbers the issue asks for, as one JSON document."""
    steps = _load(out / "steps.json") or {}
    doctor = _load(out / "doctor.json")
    layouts = _load(out / "verify-layouts.json")
    compiled = _load(out / "verify-compile.json")
    summary: dict = {"steps": steps, "doctor": doctor, "verify_layouts": layouts, "verify_compile": compiled}
    derived: dict = {}
    if compiled:
        rows = {r["layout"]: r for r in compiled.get("layouts", [])}
        eager, comp = rows.get("pipeline:1"), rows.get("pipeline:1:compile")
        if eager and comp and eager.get("samples_per_sec") and comp.get("samples_per_sec"):
            derived["compile_vs_eager_throughput"] = comp["samples_per_sec"] / eager["samples_per_sec"]
            derived["compile_target"] = COMPILE_TARGET
            derived["compile_target_met"] = derived["compile_vs_eager_throughput"] >= COMPILE_TARGET
        if eager and comp and eager.get("median_step_s") and comp.get("median_step_s"):
            derived["compile_vs_eager_step"] = eager["median_step_s"] / comp["median_step_s"]
        if comp:
            derived["compile_s"] = comp.get("compile_s")
            derived["compile_max_relative_difference"] = comp.get("max_relative_difference")
            derived["compile_bound"] = comp.get("bound")
    if layouts:
        pairs = [r for r in layouts.get("layouts", []) if r["strategy"] == "cfg"]
        if pairs:
            derived["guidance_max_relative_difference"] = max(r["max_relative_difference"] or 0 for r in pairs)
            derived["guidance_bound"] = pairs[0]["bound"]
    summary["derived"] = derived
    summary["ok"] = bool(steps) and all(step.get("rc") == 0 for step in steps.values())
    return summary


def _fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown(summary: dict) -> str:
    """One table: every layout checked, then the derived numbers and the steps' exit codes."""
    columns = ["check", "layout", "promise", "latents (max rel. diff.)", "frames", "samples/s", "vs diffusers"]
    columns += ["step ms", "compile s", "result"]
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("verify_layouts", "verify_compile"):
        report = summary.get(name)
        if not report:
            lines.append(f"| {name} | — | — | — | — | — | — | — | — | did not produce a report |")
            continue
        s = report["settings"]
        where = f"{s['dtype']} {'x'.join(map(str, s['latent_shape']))} T={s['total_steps']} S={s['num_samples']}"
        for r in report["layouts"]:
            latents = "bitwise" if r["latents_bitwise"] else _fmt(r["max_relative_difference"], ".1e")
            frames = "—" if r["frames_equal"] is None else ("equal" if r["frames_equal"] else "differ")
            step = None if r.get("median_step_s") is None else 1000 * r["median_step_s"]
            result = "pass" if r["ok"] else "FAIL: " + " ".join(str(r["problem"]).split()).replace("|", "/")
            lines.append(
                f"| {name.replace('_', ' ')} ({where}) | {r['layout']} | {r['claim']} | {latents} | {frames} | "
                f"{_fmt(r['samples_per_sec'])} | {_fmt(r['vs_diffusers'], '.2f', 'x')} | {_fmt(step, '.1f')} | "
                f"{_fmt(r['compile_s'], '.1f')} | {result} |"
            )
        ref = report["reference"]
        lines.append(
            f"| {name.replace('_', ' ')} ({where}) | diffusers (in process) | reference | — | — | "
            f"{_fmt(ref['samples_per_sec'])} | 1.00x | — | — | reference |"
        )
    d = summary.get("derived", {})
    lines.append("")
    lines.append("| derived | value |")
    lines.append("|---|---|")
    if "compile_vs_eager_throughput" in d:
        met = "met" if d["compile_target_met"] else "NOT met"
        lines.append(
            f"| --compile vs eager, steady samples/s at N=1 | {d['compile_vs_eager_throughput']:.3f}x "
            f"(target {d['compile_target']}x: {met}) |"
        )
    if "compile_vs_eager_step" in d:
        lines.append(f"| --compile vs eager, one UNet step | {d['compile_vs_eager_step']:.3f}x |")
    if d.get("compile_s") is not None:
        lines.append(f"| compile time (warm-up call) | {d['compile_s']:.1f} s |")
    if d.get("compile_max_relative_difference") is not None:
        lines.append(
            f"| --compile max relative difference | {d['compile_max_relative_difference']:.2e} "
            f"(bound {d['compile_bound']:.0e}) |"
        )
    if d.get("guidance_max_relative_difference") is not None:
        lines.append(
            f"| guidance pair max relative difference | {d['guidance_max_relative_difference']:.2e} "
            f"(bound {d['guidance_bound']:.0e}) |"
        )
    for name, step in summary.get("steps", {}).items():
        lines.append(f"| step {name} | exit {step.get('rc')} in {_fmt(step.get('seconds'), '.0f', ' s')} |")
    env = (summary.get("verify_layouts") or summary.get("verify_compile") or {}).get("environment", {})
    if env:
        gpu = env.get("gpu") or "no GPU"
        lines.append(
            f"| machine | {gpu}; torch {env.get('torch')} (CUDA {env.get('cuda')}), diffusers {env.get('diffusers')} |"
        )
    return "\n".join(lines) + "\n"


def report(out: Path) -> int:
    summary = summarize(out)
    (out / "acceptance.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "acceptance.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("check")
    c.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    c.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml", help="the floors to check")
    r = sub.add_parser("report")
    r.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    return check(args.device, args.pyproject) if args.what == "check" else report(args.out)


if __name__ == "__main__":
    sys.exit(main())
