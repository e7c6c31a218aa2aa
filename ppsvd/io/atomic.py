"""Atomic writes of run outputs: nothing half-written ever stands under its final name.

Every file is written to a temporary name in the same directory, flushed and fsync'ed, then
renamed into place (os.replace is atomic on POSIX). A failed write removes its temporary file; a
process killed mid-write leaves at most a '.tmp-*' file, which `remove_temp_files` sweeps.
Files get the modes the umask allows, like any other file the user creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppsvd.errors import ConfigError

TEMP_PREFIX = ".tmp-"


def _create_temp(final: Path) -> Path:
    """A new empty file next to `final`. Created with mode 0666 so the kernel applies the umask
    (tempfile.mkstemp forces 0600; reading the umask to chmod later would change it process-wide)."""
    for _ in range(100):
        tmp = final.with_name(f"{TEMP_PREFIX}{final.stem}-{secrets.token_hex(4)}{final.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {final}")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is moved to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(final)
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


def remove_temp_files(run_dir: Path) -> int:
    """Delete the '.tmp-*' files a killed writer left anywhere under run_dir; returns how many."""
    removed = 0
    for path in Path(run_dir).rglob(f"{TEMP_PREFIX}*"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def check_output_dir(path: Path, flag: str = "--output-dir") -> Path:
    """Create `path` if needed and make sure files can be created in it; ConfigError (one line) if not."""
    path = Path(path)
    fix = "pick a directory you can write to"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {path} is a file, not a directory; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create it ({exc.strerror or type(exc).__name__}); {fix}") from None
    if not path.is_dir():
        raise ConfigError(f"{flag} {path} is not a directory; {fix}")
    try:
        probe = _create_temp(path / "probe")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there ({exc.strerror or type(exc).__name__}); {fix}") from None
    return path


@dataclass(frozen=True)
class DirIdentity:
    """Which directory a path named when a run created it: a removed or replaced run dir differs."""

    path: Path
    device: int
    inode: int

    @staticmethod
    def of(path: Path) -> DirIdentity:
        st = os.stat(path)
        return DirIdentity(Path(path), st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the directory is still there and the same one; else what happened to it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the run directory {self.path} was removed during the run"
        except OSError as exc:
            return f"the run directory {self.path} is no longer readable ({exc.strerror})"
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return f"the run directory {self.path} was removed or replaced during the run"
        return None
