"""The one place output goes through: Rich consoles for results (stdout) and messages (stderr)."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType
from rich.markup import escape

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def error_line(message: str) -> None:
    """The one-line form every user-facing error takes."""
    err.print(f"[bold red]ppsvd: error:[/] {escape(message)}", markup=True, soft_wrap=True)


def notice(message: str) -> None:
    err.print(f"[yellow]ppsvd:[/] {escape(message)}", markup=True, soft_wrap=True)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 sample', '3 samples': a number with its noun in the right form."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


LOG_WIDTH_MAX = 240
"""The widest a table gets in a log file (a line longer than this wraps after all)."""


def show(renderable: RenderableType) -> None:
    """A table (or any renderable) on stdout: as wide as the terminal on one; at its natural width
    in a file or pipe (a job's log), where wrapping at Rich's default 80 columns only breaks rows."""
    if out.is_terminal:
        out.print(renderable)
        return
    natural = out.measure(renderable, options=out.options.update_width(LOG_WIDTH_MAX)).maximum
    wide = Console(file=io.StringIO(), width=max(out.width, natural), highlight=False, color_system=None)
    wide.print(renderable)
    lines = wide.file.getvalue().splitlines()
    out.file.write("".join(line.rstrip() + "\n" for line in lines))
    out.file.flush()
