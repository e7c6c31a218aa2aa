"""Atomic writes of run outputs: nothing half-written ever stands under its final name.

Every file is written to a temporary name in the same directory, flushed and fsync'ed, then
renamed into place (os.replace is atomic on POSIX). A crash leaves at most a '.tmp-*' file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is moved to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.stem}-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Run writer(tmp_path) (e.g. a video encoder that wants a file name), then move into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def make_run_dir(output_dir: Path, label: str) -> Path:
    """A new directory output_dir/<UTC time>-<label>[-k] that no earlier run used."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(output_dir) / f"{stamp}-{label}"
    candidate, k = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            k += 1
            candidate = base.with_name(f"{base.name}-{k}")


def run_label(model: str, strategy: str, world: int) -> str:
    """The tail of a run directory's name: '<model>-<strategy>-n<N>'."""
    name = Path(model).name or "model"
    return f"{name}-{strategy}-n{world}"
