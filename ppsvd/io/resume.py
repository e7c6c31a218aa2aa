"""`--resume RUN_DIR`: continue a run that was stopped, generating only the samples it lacks.

Sample i depends only on the run's settings and seed + i (never on N, the transport or the
order), so a resumed run keeps every finished sample and hands the stages the missing indices;
its outputs equal an uninterrupted run's bit for bit. What may change on resume is only how the
run is executed (stages, transport, timeouts, progress); anything that changes a sample's
values must match the saved config.json, or the command refuses with the options that differ.

What is trusted, and why (ppsvd.io.rundir, ppsvd.io.integrity, ppsvd.io.sources): the directory
must carry the marker every run directory gets when it is created (anything else is refused and
left untouched); one writer at a time (its lock); config.json must still give the sample settings
the marker recorded (an edit is refused, naming what changed); the input images must still have
the digests the run recorded; and a finished sample is kept only if its journal entry matches the
run's name, seed and settings for its index and every file it lists lies inside the directory
with the digest it was written with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError
from ppsvd.io.integrity import entry_problem, settings_digest
from ppsvd.io.results import listed_entries
from ppsvd.io.rundir import RunDirLock, read_marker
from ppsvd.io.samples import plan_samples

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


def sample_settings(config: RunConfig) -> dict[str, Any]:
    """Everything that decides a sample's values (every option but those that only change how the
    run executes), as plain JSON: recorded in the run directory's marker, digested in the journal."""
    settings = {name: value for name, value in config.options().items() if name not in EXECUTION_FIELDS}
    settings["resolved_dtype"] = config.model.resolved_dtype
    # The guidance split is within a bound of the reference, every other layout bitwise.
    settings["guidance_split"] = config.layout.strategy == "cfg"
    return json.loads(json.dumps(settings, sort_keys=True, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON")


def hold(run_dir: Path) -> RunDirLock:
    """Before reading or changing anything of a run to resume: it must be a run directory (its
    marker), and no other process may be writing it (its lock, held until release())."""
    read_marker(run_dir)
    return RunDirLock(run_dir).acquire()


def load_run_config(run_dir: Path) -> RunConfig:
    """The RunConfig a run directory was made with (its config.json), checked: ConfigError (one
    line) for a directory that is no run, a config.json that is not one, or one edited since."""
    run_dir = Path(run_dir)
    marker = read_marker(run_dir)
    where = f"--resume {run_dir}: {CONFIG}"
    try:
        data = json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"--resume {run_dir}: no {CONFIG} there (the run stopped before it started); start a new run instead"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is unreadable ({exc}); start a new run instead") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} holds a {type(data).__name__}, not a run's settings; start a new run instead")
    try:
        config = RunConfig.from_json(data).validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(f"{where} does not describe a run this ppsvd can continue ({exc})") from None
    _check_unchanged(run_dir, sample_settings(config), marker["settings"])
    return config


def _check_unchanged(run_dir: Path, now: dict[str, Any], recorded: dict[str, Any]) -> None:
    """config.json must still give the sample settings the run was started with (its marker's)."""
    changed = [
        f"{name} {_show(now[name])} (the run was made with {_show(recorded[name])})"
        for name in sorted(set(now) & set(recorded))
        if now[name] != recorded[name]
    ]
    if changed:
        shown = "; ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise ConfigError(
            f"--resume {run_dir}: {CONFIG} was edited after the run started: {shown}; "
            "restore it, or start a new run with the new settings"
        )


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
    """Which samples of run_dir are finished (each entry checked: sample_problem) and which remain."""
    run_dir = Path(run_dir)
    settings = settings_digest(sample_settings(config))
    specs = plan_samples(config)
    kept = [
        e
        for e in listed_entries(run_dir)
        if 0 <= e["index"] < config.job.num_samples
        and sample_problem(run_dir, e, config, specs[e["index"]], settings) is None
    ]
    done = {e["index"] for e in kept}
    remaining = tuple(i for i in range(config.job.num_samples) if i not in done)
    return ResumePlan(run_dir=run_dir, config=config, kept=kept, remaining=remaining)


def sample_problem(run_dir: Path, entry: dict, config: RunConfig, spec, settings: str) -> str | None:
    """None when the entry is sample spec.index of this run, intact; else why it is made again."""
    outputs = ["latents"] if config.output.save_latents else []
    if not config.model.is_synthetic:  # the stand-in decodes no video
        wanted = (("videos", config.output.save_video), ("frames", config.output.save_frames))
        outputs += [kind for kind, on in wanted if on]
    videos = config.job.latent_shape[0]  # B: one video (and frames folder) each
    expected = {"name": spec.name, "seed": spec.seed, "settings": settings, "outputs": outputs, "videos": videos}
    return entry_problem(run_dir, entry, expected)
