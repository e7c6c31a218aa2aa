"""The end-of-run summary: the per-stage table and the headline numbers, from timeline.json."""

from __future__ import annotations

from pathlib import Path


def print_summary(run_dir: Path) -> None:
    from ppsvd.console import out
    from ppsvd.metrics import summarize
    from ppsvd.report import summary_table
    from ppsvd.timeline import RunTimeline

    timeline = RunTimeline.load(Path(run_dir) / "timeline.json")
    out.print(summary_table(summarize(timeline)))
    out.print(f"outputs: {run_dir}")
