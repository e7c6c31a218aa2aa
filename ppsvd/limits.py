"""Types and numeric ranges of a run's settings, checked before anything runs.

Every value must have the type its RunConfig field declares (a config.json edited by hand, a
Python API call), every float must be finite, and every number must lie in the range the code
that uses it accepts: seeds in what torch.Generator.manual_seed takes (for every sample: seed + i
included), conditioning values representable in the run's dtype, frame rates that ffmpeg can
write, waits and emulated costs that time.sleep and timedelta take. RunConfig.validate() calls
check_values first, so NaN, inf or an overflowing seed from the CLI, the API, a job file or a
config.json is one line and exit code 2 before any worker starts, never a stage failing later.

The lower bounds (positive step counts, non-negative costs, ...) stay with each section's own
checks in ppsvd.config; this module adds what holds for every field alike and the upper bounds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ppsvd.errors import ConfigError

SEED_MAX = 2**64 - 1
"""The largest seed torch.Generator.manual_seed accepts (it takes -2**63 .. 2**64 - 1; ppsvd's are >= 0)."""
FRAME_RATE_MAX = 2**31 - 1
"""ffmpeg holds a frame rate as a fraction of C ints: a larger MP4 rate makes it fail."""
WAIT_MAX_S = 1e8
"""Longest --timeout, --stall-timeout, --progress-interval (about 3 years): far above any real
wait, far below what timedelta, the store's millisecond timeouts and time.sleep accept."""
COST_MAX_MS = 1e8
"""Longest emulated cost (--step-ms, --encode-ms, --decode-ms, --cfg-half-ms) of the synthetic model."""
SPEED_RANGE = (1e-3, 1e3)
"""--stage-speed: a device 1000 times slower or faster than the reference is no GPU this runs on."""
DTYPE_MAX = {"fp32": 3.4028234663852886e38, "fp16": 65504.0, "bf16": 3.3895313892515355e38}
"""The largest finite value of each dtype: conditioning values (added_time_ids, guidance scales)
become tensors of the run's dtype, and a larger one would be inf there."""

WAITS = ("timeout_s", "stall_timeout_s", "progress_interval_s")
COSTS = ("step_ms", "encode_ms", "decode_ms", "cfg_half_ms")


def flag(name: str) -> str:
    """The CLI flag of a flat option name: timeout_s -> --timeout, step_ms -> --step-ms."""
    return "--" + name.removesuffix("_s").replace("_", "-")


def check_values(config: Any) -> None:
    """Types first (so the range checks compare numbers), then finiteness and ranges. ConfigError, one line."""
    for section in _sections(config):
        hints = typing.get_type_hints(type(section))
        for field in dataclasses.fields(section):
            _check_type(field.name, getattr(section, field.name), hints[field.name])
    for section in _sections(config):
        for field in dataclasses.fields(section):
            _check_finite(flag(field.name), getattr(section, field.name))
    for k, item in enumerate(config.job.inputs):
        for field in dataclasses.fields(item):
            _check_finite(f"{_entry(k, item)}{field.name}", getattr(item, field.name))
    _check_ranges(config)


# -- types -----------------------------------------------------------------------------------------


def _sections(config: Any) -> list[Any]:
    return [
        getattr(config, f.name) for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))
    ]


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise ConfigError(f"{name} {_show(value)} is not {_describe(hint)}; give {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:  # which of the choices: the section's own check names them
        return any(type(value) is type(arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return True  # a fixed shape (latent_shape): its own check names the expected form
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, os.PathLike))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            return False
        inner = typing.get_type_hints(hint)
        return all(_matches(getattr(value, f.name), inner[f.name]) for f in dataclasses.fields(hint))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return "an object"
    return {
        type(None): "null",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(hint, "entries")


# -- finite and in range ------------------------------------------------------------------------------


def _check_finite(name: str, value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            shown = ",".join(_show(x) for x in values) if isinstance(value, tuple) else _show(v)
            raise ConfigError(f"{name} {shown} is not a finite number; give a finite value")


def _check_ranges(config: Any) -> None:
    for name in WAITS:
        value = _find(config, name)
        if value > WAIT_MAX_S:
            raise ConfigError(f"{flag(name)} {_show(value)} is too long; use at most {WAIT_MAX_S:.0f} seconds")
    for name in COSTS:
        value = _find(config, name)
        if value is not None and value > COST_MAX_MS:
            raise ConfigError(f"{flag(name)} {_show(value)} is too long; use at most {COST_MAX_MS:.0f} milliseconds")
    low, high = SPEED_RANGE
    for speed in config.synthetic.stage_speed:
        if speed > 0 and not low <= speed <= high:  # not positive: SyntheticSection says so
            raise ConfigError(
                f"--stage-speed {_show(speed)} is outside {low:g}..{high:g}; give each device's speed relative to 1"
            )
    _check_seeds(config)
    _check_conditioning(config)


def _find(config: Any, name: str) -> Any:
    for section in _sections(config):
        if hasattr(section, name):
            return getattr(section, name)
    raise KeyError(name)


def _check_seeds(config: Any) -> None:
    job = config.job
    for k, item in enumerate(job.inputs):
        if item.seed is not None and item.seed > SEED_MAX:
            raise ConfigError(
                f"{_entry(k, item)}seed {_show(item.seed)} is above {SEED_MAX}, the largest seed torch takes"
            )
    last = _last_index_on_run_seed(config)
    if last is not None and job.seed + last > SEED_MAX:
        if last == 0 or job.seed > SEED_MAX:
            raise ConfigError(
                f"--seed {_show(job.seed)} is above {SEED_MAX}, the largest seed torch takes; use a smaller seed"
            )
        raise ConfigError(
            f"--seed {_show(job.seed)} gives sample {last} the seed {_show(job.seed + last)} (sample i uses seed + i), "
            f"above {SEED_MAX}, the largest seed torch takes; use --seed {max(0, SEED_MAX - last)} or less"
        )


def _last_index_on_run_seed(config: Any) -> int | None:
    """The largest sample index whose seed is the run's seed + index (None: every sample has its own)."""
    job = config.job
    if not job.inputs or config.model.is_synthetic:  # the stand-in always uses seed + index
        return job.num_samples - 1
    own = [r for r, item in enumerate(job.inputs) if item.seed is None and r < job.num_samples]
    if not own:
        return None
    n = len(job.inputs)
    return max(r + (job.num_samples - 1 - r) // n * n for r in own)


def _check_conditioning(config: Any) -> None:
    """Values that become tensors of the run's dtype, and frame rates ffmpeg takes."""
    dtype = config.model.resolved_dtype
    top = DTYPE_MAX.get(dtype, DTYPE_MAX["fp16"])
    svd, out = config.svd, config.output
    for name in ("noise_aug_strength", "min_guidance_scale", "max_guidance_scale"):
        value = getattr(svd, name)
        if abs(value) > top:
            raise ConfigError(
                f"{flag(name)} {_show(value)} does not fit in {dtype} (at most {top:g}); use a smaller value"
            )
    rates = [("--fps", svd.fps)] + [
        (f"{_entry(k, item)}fps", item.fps) for k, item in enumerate(config.job.inputs) if item.fps is not None
    ]
    for name, fps in rates:
        if fps - 1 > top:  # SVD conditions on fps - 1
            raise ConfigError(
                f"{name} {_show(fps)} does not fit in {dtype} (at most {top:g}); use a smaller frame rate"
            )
        if out.save_video and out.video_fps is None and fps > FRAME_RATE_MAX:
            raise ConfigError(
                f"{name} {_show(fps)} is above {FRAME_RATE_MAX}, the largest MP4 frame rate ffmpeg writes; "
                "use a smaller value, or set the video's rate apart with --video-fps"
            )
    for k, item in enumerate(config.job.inputs):
        if item.noise_aug_strength is not None and abs(item.noise_aug_strength) > top:
            raise ConfigError(
                f"{_entry(k, item)}noise_aug_strength {_show(item.noise_aug_strength)} does not fit in {dtype} "
                f"(at most {top:g}); use a smaller value"
            )
    if out.video_fps is not None and out.video_fps > FRAME_RATE_MAX:
        raise ConfigError(
            f"--video-fps {_show(out.video_fps)} is above {FRAME_RATE_MAX}, the largest MP4 frame rate ffmpeg writes"
        )


def _entry(k: int, item: Any) -> str:
    """How a job-file entry is named in messages (as JobSection.validate names it)."""
    return f"--inputs entry {k + 1} ({item.image}): "


def _show(value: Any) -> str:
    """A value for a one-line message: huge integers shortened, floats as given."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"{value:.3e}"
    if isinstance(value, (str, bytes)):
        return repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    return str(value) if not isinstance(value, (list, dict)) else repr(value)[:80]
