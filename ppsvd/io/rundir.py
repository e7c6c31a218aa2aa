"""A run directory identifies itself, and has one writer at a time.

- A marker file (MARKER) is written into every run directory the moment it is created, with the
  settings that decide the samples' values. `--resume` accepts only a directory that has it:
  anything else (a model folder that happens to hold a config.json, a typo) is refused with
  exit code 2 and left untouched. The recorded settings let --resume tell that config.json was
  edited since (ppsvd.io.resume).
- The writer of a run (the launcher, or torchrun's rank 0) holds an advisory lock on the marker
  (flock: per open file, never inherited by the workers, released by the kernel when the process
  ends however it ends, so a crashed run leaves no stale lock). A second run or resume of the same
  directory is refused with one line instead of computing everything twice.
- A run that never started (interrupted while loading, before config.json) leaves no directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ppsvd.errors import ConfigError, RunDirBusy
from ppsvd.io.atomic import TEMP_PREFIX, make_run_dir, write_json_atomic

MARKER = ".ppsvd-run"
"""The file that makes a directory a ppsvd run directory (JSON: KIND, when, the sample settings)."""
KIND = "ppsvd run directory"
CONFIG = "config.json"


def create_run_dir(output_dir: Path, label: str, settings: dict[str, Any]) -> Path:
    """A new run directory under output_dir, marked as one (see make_run_dir for its name)."""
    run_dir = make_run_dir(output_dir, label)
    try:
        mark(run_dir, settings)
    except BaseException:  # a signal or a full disk between the two: no unmarked directory stays
        remove_if_unstarted(run_dir)
        raise
    return run_dir


def create_named_run_dir(run_dir: Path, settings: dict[str, Any]) -> Path:
    """A new run directory at exactly this path (the bench names its runs), marked as one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=False)
    try:
        mark(run_dir, settings)
    except BaseException:
        remove_if_unstarted(run_dir)
        raise
    return run_dir


def mark(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write the marker of a run directory this process just created."""
    write_json_atomic(
        Path(run_dir) / MARKER,
        {"kind": KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings},
    )


def read_marker(run_dir: Path, flag: str = "--resume") -> dict[str, Any]:
    """The marker of an existing run directory; ConfigError (nothing touched) if it is none."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{flag} {run_dir}: no such directory; pass the directory of the run to continue")
    if not run_dir.is_dir():
        raise ConfigError(f"{flag} {run_dir} is not a directory; pass the directory of the run to continue")
    not_one = (
        f"{flag} {run_dir} is not a ppsvd run directory (ppsvd writes {MARKER} into every run directory it creates, "
        "and there is none); pass the directory a run printed, e.g. ppsvd-runs/<time>-<model>-<strategy>-n<N>"
    )
    path = run_dir / MARKER
    if not path.is_file():
        raise ConfigError(not_one)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise ConfigError(f"{flag} {run_dir}: its {MARKER} is unreadable; start a new run instead") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("settings"), dict):
        raise ConfigError(not_one)
    return data


class RunDirLock:
    """The run directory's writer lock: flock on its marker, exclusive, never waited for.

    Re-entrant within one process (the command locks before it rewrites the journal, the launcher
    again for the run: one lock), released when the last holder releases it or the process ends."""

    _held: dict[tuple[int, int], tuple[int, int]] = {}
    """(device, inode) of a locked marker -> (open fd, holders) in this process."""
    _guard = threading.Lock()

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._key: tuple[int, int] | None = None

    def acquire(self) -> RunDirLock:
        path = self.run_dir / MARKER
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(
                f"{self.run_dir}: cannot open its {MARKER} ({exc.strerror or type(exc).__name__}); "
                "check the directory's permissions"
            ) from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with self._guard:
            if key in self._held:
                os.close(fd)
                held_fd, count = self._held[key]
                self._held[key] = (held_fd, count + 1)
                self._key = key
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirBusy(
                    f"{self.run_dir} is in use by another ppsvd process (the run, or a --resume of it, is still "
                    "going); wait for it to end or stop it, then resume"
                ) from None
            except OSError as exc:  # a file system without locks: say so rather than run unguarded
                os.close(fd)
                raise ConfigError(
                    f"{self.run_dir}: cannot lock it ({exc.strerror or type(exc).__name__}); "
                    "put the runs on a local file system"
                ) from None
            self._held[key] = (fd, 1)
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with self._guard:
            fd, count = self._held[self._key]
            if count > 1:
                self._held[self._key] = (fd, count - 1)
            else:
                del self._held[self._key]
                os.close(fd)  # closing the last descriptor releases the flock
        self._key = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_if_unstarted(run_dir: Path) -> bool:
    """Remove a run directory this process created if the run never started (no config.json, no
    journal): what is in it is only the marker, empty folders and temporary files. Anything else
    there is left alone (and so the directory). Returns True if the directory is gone."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists() or any(run_dir.glob("*manifest*")):
        return False
    try:
        paths = sorted(run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True)
        ours = all(
            p.is_dir() and not p.is_symlink() or p.name == MARKER or p.name.startswith(TEMP_PREFIX) for p in paths
        )
        if not ours:
            return False
        for path in paths:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        run_dir.rmdir()
    except OSError:
        return False
    return True
