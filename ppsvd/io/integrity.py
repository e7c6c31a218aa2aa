"""What makes a finished sample trustworthy on resume: digests of its files and its settings.

The journal records, per finished sample, its index, name and seed, the digest of the settings
that decide its values (ppsvd.io.resume.sample_settings) and the digest of every file it wrote.
`--resume` keeps a sample only if all of that matches what the run would make now and every path
stays inside the run directory: a latents file overwritten with zeros or NaN, flipped bytes, an
fp16 copy, two files swapped, a truncated or garbage MP4, an entry pointing at ../../etc/passwd or
a config.json edited since: all are generated again (or refused), never kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

DIGEST = "sha256"
_BLOCK = 2**20


def digest_bytes(data: bytes) -> str:
    return f"{DIGEST}:{hashlib.sha256(data).hexdigest()}"


def digest_file(path: Path) -> str:
    """The digest of a file's bytes, read in blocks (latents and videos may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return f"{DIGEST}:{h.hexdigest()}"


def settings_digest(settings: dict[str, Any]) -> str:
    """The digest of a run's sample settings, independent of key order."""
    return digest_bytes(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())


def inside(run_dir: Path, name: Any) -> Path | None:
    """run_dir / name if `name` is a plain relative path that stays inside run_dir (no '..', not
    absolute, no symlink on the way out), else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts):
        return None
    path = Path(run_dir) / rel
    try:
        root = Path(run_dir).resolve(strict=True)
        if not path.resolve(strict=True).is_relative_to(root) or path.is_symlink():
            return None
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    return path


def entry_problem(run_dir: Path, entry: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """None when a journal entry is a finished sample this run can keep, else why not.

    expected: what the run makes for the entry's index now: 'name', 'seed', 'settings' (digest),
    'outputs' (the kinds of files it must have: 'latents', 'videos', 'frames') and 'videos' (how
    many videos a sample has: B of the latent shape)."""
    for key in ("name", "seed", "settings"):
        if entry.get(key) != expected[key]:
            return f"its {key} is {entry.get(key)!r}, the run's is {expected[key]!r}"
    files, listed = entry.get("files"), _listed_files(entry)
    if not isinstance(files, dict) or not files or listed is None:
        return "it records no file digests"
    for kind in expected["outputs"]:
        count = 1 if kind == "latents" else expected["videos"]
        if len(listed.get(kind, [])) != count:
            return f"it has {len(listed.get(kind, []))} {kind}, the run makes {count}"
    name = str(expected["name"])
    for kind, names in listed.items():
        for rel in names:
            if not _named(rel, kind, name) or inside(run_dir, rel) is None:
                return f"{rel} is not one of its {kind}, or not inside the run directory"
    singles = set(listed.get("latents", []) + listed.get("videos", []))
    folders = {PurePosixPath(d) for d in listed.get("frames", [])}
    if not singles <= set(files):
        return "a file it lists has no digest"
    for rel, digest in files.items():
        if rel not in singles and PurePosixPath(str(rel)).parent not in folders:
            return f"{rel} is not one of its files"
        path = inside(run_dir, rel)
        if path is None or not path.is_file():
            return f"{rel} is missing, or not inside the run directory"
        try:
            if digest_file(path) != digest:
                return f"{rel} differs from what was written"
        except OSError as exc:
            return f"{rel} is unreadable ({exc.strerror or type(exc).__name__})"
    return None


def _named(rel: str, kind: str, name: str) -> bool:
    """Whether `rel` is where the writer (ppsvd.io.results) puts a file of this kind for sample
    `name`: latents/NAME.safetensors, videos/NAME[_bJ].mp4, frames/NAME[_bJ]."""
    path = PurePosixPath(rel)
    if kind == "latents":
        return rel == f"latents/{name}.safetensors"
    suffix = ".mp4" if kind == "videos" else ""
    stem = path.name.removesuffix(suffix) if suffix and path.name.endswith(suffix) else path.name
    if str(path.parent) != kind or (suffix and not path.name.endswith(suffix)):
        return False
    return stem == name or re.fullmatch(re.escape(name) + r"_b\d+", stem) is not None


def _listed_files(entry: dict[str, Any]) -> dict[str, list[str]] | None:
    """The entry's file lists by kind: 'latents' (0 or 1 file), 'videos', 'frames' (folders)."""
    out: dict[str, list[str]] = {}
    latents = entry.get("latents")
    if latents is not None:
        if not isinstance(latents, str):
            return None
        out["latents"] = [latents]
    for kind in ("videos", "frames"):
        value = entry.get(kind, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        out[kind] = list(value)
    return out
