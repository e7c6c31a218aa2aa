"""The one place output goes through: Rich consoles for results (stdout) and messages (stderr)."""

from __future__ import annotations

from rich.console import Console
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
