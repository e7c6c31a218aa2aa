"""`--resume RUN_DIR`: continue a run that was stopped, generating only the samples it lacks.

Sample i depends only on the run's settings and seed + i (never on N, the transport or the
order), so a resumed run keeps every finished sample and hands the stages the missing indices;
its outputs equal an uninterrupted run's bit for bit. What may change on resume is only how the
run is executed (stages, transport, timeouts, progress); anything that changes a sample's
values must match the saved config.json, or the command refuses with the options that differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.io.results import entry_files, listed_entries
from ppsvd.shapes import LatentShape

CONFIG = "config.json"

EXECUTION_FIELDS = frozenset(
    {
        "nproc",
        "transport",
        "strategy",
        "partition",
        "costs_from",
        "stage_speed",
        "output_dir",
        "timeout_s",
        "stall_timeout_s",
        "max_in_flight",
        "bind_host",
        "zmq_endpoint",
        "step_ms",
        "encode_ms",
        "decode_ms",
        "debug",
        "show_progress",
        "extra",
        "log_format",
        "progress_interval_s",
        "pipeline_stages",
        "replicas",
        "goal",
        "cfg_half_ms",
        "stages_per_gpu",
    }
)
"""RunConfig options (flat names, as RunConfig.options() gives them) that change how a run
executes, never a sample's values (the exactness promise: any N, transport and partition): a
resumed run may set them anew."""

FOLLOW_THE_COMMAND = frozenset({"debug", "show_progress"})
"""Taken from this command line even when not given (not from the stopped run)."""


@dataclass(frozen=True)
class ResumePlan:
    run_dir: Path
    config: RunConfig
    kept: list[dict]
    """Manifest entries of the finished samples that passed verification."""
    remaining: tuple[int, ...]
    """Sample indices still to generate, in order."""

    @property
    def finished(self) -> bool:
        """Nothing left to generate and the final manifest written: resuming is a no-op."""
        return not self.remaining and (self.run_dir / "manifest.json").is_file()


def load_run_config(run_dir: Path) -> RunConfig:
    """The RunConfig a run directory was made with (its config.json); ConfigError if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such directory; pass the directory of the run to continue")
    try:
        data = json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"--resume {run_dir}: no {CONFIG} there; pass a directory a ppsvd run or simulate wrote"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {run_dir}: {CONFIG} is unreadable ({exc}); start a new run instead") from None
    try:
        return RunConfig.from_json(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"--resume {run_dir}: {CONFIG} does not describe a run this ppsvd can continue ({exc})"
        ) from None


def merge(
    run_dir: Path, saved: RunConfig, given: RunConfig, explicit: dict[str, str], *, keep_given: tuple[str, ...] = ()
) -> RunConfig:
    """The resumed run's config: the saved one, with the execution options this command line set.

    explicit: RunConfig field -> the flag that set it on this command line. An explicit option
    that would change a sample's values and differs from the saved run is refused (ConfigError
    naming every such option). keep_given: fields always taken from `given` (e.g. the torchrun
    world size)."""
    differing = []
    changes: dict[str, Any] = {}
    ours_by_name, theirs_by_name = given.options(), saved.options()  # flat option name -> value
    for name, flag in sorted(explicit.items(), key=lambda item: item[1]):
        if name not in theirs_by_name:
            continue
        ours, theirs = ours_by_name[name], theirs_by_name[name]
        if name == "strategy" and ours == "auto":
            continue  # the run's own layout goes on: auto could pick one that splits guidance differently
        if name == "strategy" and (ours == "cfg") != (theirs == "cfg"):
            # The guidance split is within a bound of the reference, every other layout bitwise:
            # one run never mixes the two.
            differing.append(f"{flag} {_show(ours)} (the run used {_show(theirs)})")
        elif name in EXECUTION_FIELDS:
            changes[name] = ours
        elif _normal(ours) != _normal(theirs):
            differing.append(f"{flag} {_show(ours)} (the run used {_show(theirs)})")
    if differing:
        raise ConfigError(
            f"--resume {run_dir}: {'; '.join(differing)}: "
            + ("these change the samples; drop them" if len(differing) > 1 else "this changes the samples; drop it")
            + " to continue the run as it was, or start a new run"
        )
    for name in (*FOLLOW_THE_COMMAND, *keep_given):
        changes[name] = ours_by_name[name]
    return saved.replace(**changes)


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    return str(value)


def plan_resume(run_dir: Path, config: RunConfig) -> ResumePlan:
    """Which samples of run_dir are finished (listed, every file present and loadable) and which remain."""
    run_dir = Path(run_dir)
    kept = [
        e
        for e in listed_entries(run_dir)
        if 0 <= e["index"] < config.job.num_samples and sample_is_intact(run_dir, e, config)
    ]
    done = {e["index"] for e in kept}
    remaining = tuple(i for i in range(config.job.num_samples) if i not in done)
    return ResumePlan(run_dir=run_dir, config=config, kept=kept, remaining=remaining)


def sample_is_intact(run_dir: Path, entry: dict, config: RunConfig) -> bool:
    """Every file the entry lists exists; latents load with the run's shape; videos look like MP4s."""
    files = entry_files(entry)
    if config.output.save_latents and not entry.get("latents"):
        return False
    if config.output.save_video and "videos" in entry and not entry["videos"]:
        return False
    for name in files:
        path = run_dir / name
        if not path.is_file():
            return False
        if name.endswith(".safetensors") and not _latents_ok(path, config):
            return False
        if name.endswith(".mp4") and not _mp4_ok(path):
            return False
    return True


def _latents_ok(path: Path, config: RunConfig) -> bool:

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return tuple(fh.get_slice("latents").get_shape()) == LatentShape(*config.job.latent_shape).handoff()
    except Exception:  # truncated, not safetensors, no 'latents' key
        return False


def _mp4_ok(path: Path) -> bool:
    """An ISO media file starts with a box whose type is 'ftyp' (bytes 4..8)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp"
