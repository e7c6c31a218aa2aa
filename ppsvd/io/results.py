"""The last stage's outputs: final latents (safetensors), videos (MP4), frames (PNG), the manifest.

Each file is written atomically (ppsvd.io.atomic), so a finished output is never half-written.
The manifest is a journal while the run goes: one JSON line appended per finished sample
(manifest.jsonl), so the cost per sample stays flat however long the run; at the end the writer
checks that every listed file is on disk and writes manifest.json once. `--resume` reads either.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppsvd.environment import software_versions
from ppsvd.errors import Cancelled, OutputsLost
from ppsvd.io import video
from ppsvd.io.atomic import DirIdentity, write_json_atomic, write_text_atomic, write_with
from ppsvd.shapes import HANDOFF_LAYOUT

MANIFEST = "manifest.json"
JOURNAL = "manifest.jsonl"
"""One JSON line per finished sample, appended as the run goes (data-parallel workers: .manifest-<rank>.jsonl)."""


def save_latents(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Final latents as safetensors (no pickle; loadable with safetensors.torch.load_file)."""
    from safetensors.torch import save_file  # heavy: imports torch

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def sample_stem(index: int) -> str:
    """The file stem of a sample whose model gives it no name (see config.SampleSpec.name)."""
    return f"sample_{index:05d}"


VANISHED_DIR_WAIT_S = 1.0
"""How long a writer that lost a file waits to see whether its whole run directory is going."""


class ResultWriter:
    """Writes what the last stage produces, one sample at a time, each file atomically.

    Layout under run_dir, NAME being the sample's '<image stem>-s<seed>' (config.SampleSpec.name):
    latents/NAME.safetensors (key 'latents', [B, F, C, H, W]), videos/NAME.mp4 (one per video;
    '_bJ' suffix when B > 1), frames/NAME/ (PNG, optional), manifest.jsonl (a line appended per
    finished sample: it lists exactly the samples whose files are complete) and, at close(), manifest.json.
    """

    def __init__(
        self,
        run_dir: Path,
        config,
        plan,
        model_facts: dict | None = None,
        *,
        manifest_name: str = MANIFEST,
        journal_name: str = JOURNAL,
        on_written: Callable[[Any, dict], None] | None = None,
    ) -> None:
        """on_written(result, entry): a service's writer (ppsvd serve). Called once a sample's files
        are all in place; whoever gives it keeps the record (the service's job store), so this
        writer keeps no journal, no entries and writes no manifest."""
        self.run_dir = Path(run_dir)
        self.on_written = on_written
        self.manifest_name = manifest_name
        self.config = config
        self.plan = plan
        self.model_facts = model_facts or {}
        # Created once (here only when this host has not got it yet: a multi-node last stage);
        # from then on a missing or different directory is an error, never silently recreated.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.identity = DirIdentity.of(self.run_dir)
        self.journal = self.run_dir / journal_name
        # A resumed run starts from the samples it kept (the command rewrote the journal to them).
        self.entries: list[dict] = read_journal(self.journal) if on_written is None else []
        self._journal_fh = open(self.journal, "a", encoding="utf-8") if on_written is None else None
        self._lock = threading.Lock()
        """Held while a sample is written: stop() waits for it, so a sample is all written or not at all."""
        self._stopped = False

    def write(self, result) -> None:
        with self._lock:
            if self._stopped:
                raise Cancelled("the run is stopping; no more samples are written")
            problem = self.identity.problem()
            if problem is not None:
                raise OutputsLost(f"{problem}; sample {result.index} and later ones were not written")
            try:
                entry = self._write(result)
                if self.on_written is not None:
                    self.on_written(result, entry)
            except FileNotFoundError:
                problem = self._dir_problem_after_a_vanished_file()
                if problem is not None:
                    raise OutputsLost(f"{problem}; sample {result.index} and later ones were not written") from None
                raise

    def _dir_problem_after_a_vanished_file(self) -> str | None:
        """A file vanished under the writer. If the run directory is being removed, rmtree takes
        the files first and the directory last: look again for up to a second, so the message
        names the directory, not one of its temp files."""
        deadline = time.monotonic() + VANISHED_DIR_WAIT_S
        while True:
            problem = self.identity.problem()
            if problem is not None or time.monotonic() >= deadline:
                return problem
            time.sleep(0.05)

    def stop(self, timeout_s: float) -> bool:
        """The run is ending early: let the sample being written finish (up to timeout_s), then
        accept no more. Returns False if a write was still going (its temp file may remain)."""
        acquired = self._lock.acquire(timeout=timeout_s)
        self._stopped = True
        if acquired:
            if self._journal_fh is not None:
                self._journal_fh.close()
            self._lock.release()
        return acquired

    def _write(self, result) -> dict[str, Any]:
        cfg = self.config
        stem = result.meta.get("name") or sample_stem(result.index)
        entry: dict[str, Any] = {"index": result.index, **{k: v for k, v in result.meta.items()}}
        if cfg.output.save_latents:
            path = self.run_dir / "latents" / f"{stem}.safetensors"
            save_latents(
                path, {"latents": result.latents}, metadata={"index": str(result.index), "layout": HANDOFF_LAYOUT}
            )
            entry["latents"] = str(path.relative_to(self.run_dir))
        if result.frames is not None and (cfg.output.save_video or cfg.output.save_frames):
            videos, frame_dirs = [], []
            for b in range(result.frames.shape[0]):
                name = stem if result.frames.shape[0] == 1 else f"{stem}_b{b}"
                frames = result.frames[b]
                if cfg.output.save_video:
                    path = self.run_dir / "videos" / f"{name}.mp4"
                    video.write_mp4(path, frames, cfg.output.video_fps or result.meta.get("fps", cfg.svd.fps))
                    videos.append(str(path.relative_to(self.run_dir)))
                if cfg.output.save_frames:
                    folder = self.run_dir / "frames" / name
                    video.write_frames(folder, frames)
                    frame_dirs.append(str(folder.relative_to(self.run_dir)))
            entry["videos"] = videos
            if frame_dirs:
                entry["frames"] = frame_dirs
        if "started" in entry and "completed" in entry:
            entry["latency_s"] = entry["completed"] - entry["started"]
        if self._journal_fh is None:  # a service's writer: on_written keeps the record
            return entry
        self.entries.append(entry)
        # Flushed, not fsync'ed: a killed process loses nothing the kernel has; after a power
        # loss a sample whose line is missing is simply generated again by --resume.
        self._journal_fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        self._journal_fh.flush()
        return entry

    def close(self) -> None:
        """End of the run: every listed file must still be on disk; then the final manifest, once."""
        self._stopped = True
        if self._journal_fh is None:  # a service's writer: nothing to list
            return
        self._journal_fh.close()
        problem = self.identity.problem()
        if problem is not None:
            raise OutputsLost(problem)
        missing = missing_files(self.run_dir, self.entries)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise OutputsLost(
                f"files listed in the manifest are gone from {self.run_dir}: {', '.join(missing[:3])}{more}"
            )
        self.write_manifest()
        os.unlink(self.journal)

    def write_manifest(self) -> None:
        cfg = self.config
        write_json_atomic(
            self.run_dir / self.manifest_name,
            {
                "model": cfg.model.model,
                # What the stage model says it loaded ('seeded random' for tiny), not just the flag.
                "weights": self.model_facts.get("weights", cfg.model.weights),
                "revision": cfg.model.revision,
                "versions": software_versions(),
                "total_steps": cfg.job.total_steps,
                "latent_shape": list(cfg.job.latent_shape),
                "strategy": cfg.layout.strategy,
                "partition": self.plan.to_json(),
                "seed": cfg.job.seed,
                "fps": cfg.svd.fps,
                "model_facts": self.model_facts,
                "samples": sorted(self.entries, key=lambda e: e["index"]),
            },
        )


def read_journal(path: Path) -> list[dict]:
    """The entries of a manifest journal; a torn last line (a process killed mid-write) is skipped."""
    entries = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("index"), int):
                    entries.append(entry)
    except FileNotFoundError:
        pass
    return entries


def entry_files(entry: dict) -> list[str]:
    """The files (relative to the run dir) a manifest entry lists."""
    files = [entry["latents"]] if entry.get("latents") else []
    return files + list(entry.get("videos") or [])


def missing_files(run_dir: Path, entries: list[dict]) -> list[str]:
    return [name for entry in entries for name in entry_files(entry) if not (Path(run_dir) / name).is_file()]


def listed_entries(run_dir: Path) -> list[dict]:
    """Every sample a run directory lists as finished: manifest.json when the run ended, else its
    journals (a run that was stopped); one entry per index, the last one written wins."""
    run_dir = Path(run_dir)
    final = run_dir / MANIFEST
    found: list[dict] | None = None
    try:
        found = list(json.loads(final.read_text()).get("samples", []))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError):
        found = []
    if found is None:
        found = []
        for journal in [run_dir / JOURNAL, *sorted(run_dir.glob(".manifest-*.jsonl"))]:
            found.extend(read_journal(journal))
    by_index = {e["index"]: e for e in found if isinstance(e, dict) and isinstance(e.get("index"), int)}
    return [by_index[i] for i in sorted(by_index)]


def restart_journal(run_dir: Path, kept: list[dict]) -> None:
    """Before a resumed run: one journal listing exactly the kept samples; the stale final manifest
    and the data-parallel workers' journals go (the run writes them anew)."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / JOURNAL, "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in kept))
    for stale in [run_dir / MANIFEST, *run_dir.glob(".manifest-*.json"), *run_dir.glob(".manifest-*.jsonl")]:
        stale.unlink(missing_ok=True)
