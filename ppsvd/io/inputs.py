"""`--inputs FILE`: a job file with one sample per entry (an image, optionally its own seed and conditioning).

Two formats, picked by the file's suffix:
- CSV (`.csv`): a header row naming the columns, `image` required, then any of seed,
  motion_bucket_id, fps, noise_aug_strength; an empty cell takes the run's value.
- JSON lines (anything else, e.g. `.jsonl`): one object per line, the same keys
  (`{"image": "cat.png", "seed": 3, "motion_bucket_id": 180}`); blank lines are skipped.

A relative image path is relative to the job file's folder, so a job file and its images move
together; http(s) URLs are kept as they are. Every problem is one ConfigError naming the line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ppsvd.config import SAMPLE_INPUT_FIELDS, SampleInput
from ppsvd.errors import ConfigError
from ppsvd.io.images import is_url

_TYPES = {"seed": int, "motion_bucket_id": int, "fps": int, "noise_aug_strength": float}
_EXAMPLE = '{"image": "cat.png", "seed": 3, "motion_bucket_id": 180}'


def read_inputs(path: str | Path) -> tuple[SampleInput, ...]:
    """The entries of a job file, in order (ConfigError for a missing, empty or malformed file)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--inputs {path}: no such file; pass a CSV or JSON-lines job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--inputs {path}: unreadable ({type(exc).__name__}: {exc}); pass a UTF-8 CSV or JSON-lines file"
        ) from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _json_rows(path, text)
    entries = tuple(_entry(path, line, row) for line, row in rows)
    if not entries:
        raise ConfigError(f"--inputs {path}: no entries; add one line per sample, e.g. {_EXAMPLE}")
    return entries


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or ()]
    if "image" not in columns:
        raise ConfigError(
            f"--inputs {path}: the CSV header {','.join(columns) or '(none)'} has no 'image' column; "
            f"start the file with a header like image,seed,motion_bucket_id,fps,noise_aug_strength"
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise ConfigError(
                f"--inputs {path} line {line}: more cells than the header has columns; quote values that contain commas"
            )
        values = {k.strip(): (v or "").strip() for k, v in row.items()}
        if any(values.values()):
            rows.append((line, {k: v for k, v in values.items() if v != ""}))
    return rows


def _json_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--inputs {path} line {line}: not JSON ({exc.msg}); write one object per line, e.g. {_EXAMPLE}"
            ) from None
        if isinstance(value, str):
            value = {"image": value}
        if not isinstance(value, dict):
            raise ConfigError(f"--inputs {path} line {line}: expected an object like {_EXAMPLE}")
        rows.append((line, value))
    return rows


def _entry(path: Path, line: int, row: dict[str, Any]) -> SampleInput:
    where = f"--inputs {path} line {line}"
    unknown = sorted(set(row) - set(SAMPLE_INPUT_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {', '.join(map(repr, unknown))}; the fields are {', '.join(SAMPLE_INPUT_FIELDS)}"
        )
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ConfigError(f"{where}: no image; every entry needs one, e.g. {_EXAMPLE}")
    values: dict[str, Any] = {"image": _locate(path, image.strip())}
    for name, kind in _TYPES.items():
        if row.get(name) is not None:
            values[name] = _convert(where, name, row[name], kind)
    return SampleInput(**values)


def _locate(path: Path, image: str) -> str:
    if is_url(image):
        return image
    candidate = Path(image).expanduser()
    return str(candidate if candidate.is_absolute() else path.parent / candidate)


def _convert(where: str, name: str, value: Any, kind: type) -> int | float:
    if isinstance(value, bool):
        value = None  # JSON true/false is no number
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        return float(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}: {name} {value!r} is not {what}") from None
