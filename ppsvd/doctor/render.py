"""Doctor's output: a Rich table of checks (✓ ! ✗ –) with the fix under each problem, or JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ppsvd.doctor import Report

MARKS = {"pass": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red"), "skip": ("–", "dim")}
GIB = 1024**3


def to_json_text(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False, default=str)


def render(report: Report, console: Console) -> None:
    p = report.config
    console.print(
        Text.assemble(
            ("ppsvd doctor", "bold"),
            f"  planned: --model-id {p.model.model} --nproc {p.layout.nproc} --latent-shape "
            f"{' '.join(map(str, p.job.latent_shape))} "
            f"--dtype {report.dtype} --device {report.device} --transport {report.transport} --total-steps "
            f"{p.job.total_steps}",
        ),
        soft_wrap=True,
    )

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("result", overflow="fold")
    for check in report.checks:
        mark, style = MARKS[check.status]
        table.add_row(Text(mark, style=style), check.name, Text(check.summary))
        if check.fix:
            table.add_row("", "", Text.assemble(("fix: ", f"{style}"), (check.fix, "")))
    console.print(table)

    _gpu_table(report, console)
    _p2p_matrix(report, console)
    _live_table(report, console)

    counts = report.counts()
    verdict = "the planned run has what it needs" if report.exit_code == 0 else "fix the ✗ above before the planned run"
    console.print(
        Text.assemble(
            (f"{counts['pass']} passed", "green"),
            ", ",
            (f"{counts['warn']} warning{'s' if counts['warn'] != 1 else ''}", "yellow" if counts["warn"] else ""),
            ", ",
            (f"{counts['fail']} failed", "bold red" if counts["fail"] else ""),
            f", {counts['skip']} skipped in {report.elapsed_s:.1f}s: {verdict} (exit {report.exit_code})",
        ),
        soft_wrap=True,
    )


def _gpu_table(report: Report, console: Console) -> None:
    gpus = report.facts.gpus
    if not gpus:
        return
    console.print(Text("GPUs", style="bold"))
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("cuda", "name", "free / total", "capability", "NVLinks", "bus id"):
        t.add_column(col, no_wrap=col != "name")
    for g in gpus:
        mem = "?" if g.total_bytes is None else f"{(g.free_bytes or 0) / GIB:.1f} / {g.total_bytes / GIB:.1f} GiB"
        cap = "?" if g.capability is None else f"{g.capability[0]}.{g.capability[1]}"
        t.add_row(
            str(g.index),
            g.name,
            mem,
            cap,
            "?" if g.nvlinks_active is None else str(g.nvlinks_active),
            g.pci_bus_id or "",
        )
    console.print(t)


def _p2p_matrix(report: Report, console: Console) -> None:
    f = report.facts
    n = len(f.gpus)
    if n < 2 or n > 16 or not f.pairs:
        return
    cell: dict[tuple[int, int], Any] = {}
    for q in f.pairs:
        if q.p2p is None:
            v = Text("?", style="dim")
        elif not q.p2p:
            v = Text("✗", style="bold red")
        elif q.nvlink:
            v = Text("NV", style="green")
        else:
            v = Text("P2P", style="green")
        cell[(q.a, q.b)] = cell[(q.b, q.a)] = v
    console.print(
        Text.assemble(("GPU pairs", "bold"), " (NV: NVLink, P2P: peer access over PCIe, ✗: through host memory)")
    )
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("")
    for j in range(n):
        t.add_column(str(j), justify="center")
    for i in range(n):
        t.add_row(str(i), *[Text("-", style="dim") if i == j else cell.get((i, j), Text("?")) for j in range(n)])
    console.print(t)


def _live_table(report: Report, console: Console) -> None:
    check = next((c for c in report.checks if c.name == "transport"), None)
    if check is None or not check.details.get("links"):
        return
    d = check.details
    shape = " x ".join(map(str, d["payload_shape"]))
    step = d["estimated_step_s"]
    console.print(
        Text.assemble(
            ("Live transport check", "bold"),
            f": 2 local workers, {shape} {d['dtype']} ({d['payload_bytes'] / 1024:.0f} KiB) per message"
            + (f", vs a reference SVD step of ~{step:.2f} s" if step else ""),
        ),
        soft_wrap=True,
    )
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("transport", "latency", "bandwidth", "share of a step", "took", "result"):
        t.add_column(col, no_wrap=col != "result")
    for row in d["links"]:
        ok = row["ok"]
        t.add_row(
            row["label"] + (" (planned)" if row["label"] == d["planned"] and d["needed"] else ""),
            "-" if row["latency_ms"] is None else f"{row['latency_ms']:.3f} ms",
            "-" if row["bandwidth_gbps"] is None else f"{row['bandwidth_gbps']:.2f} Gbit/s",
            "-" if row["share_of_step"] is None else f"{row['share_of_step']:.3%}",
            "-" if row["elapsed_s"] is None else f"{row['elapsed_s']:.1f}s",
            Text("ok" + (" (2nd try)" if row.get("attempts", 1) > 1 else ""), style="green")
            if ok
            else Text(f"failed: {row['error']}", style="bold red"),
        )
    console.print(t)
