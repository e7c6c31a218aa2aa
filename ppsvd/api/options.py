"""Option resolution: keywords (the Python API's) and flags (the CLI's, through the same
functions) -> one checked RunConfig.

diffusers' names and the benchmark's meet here: --num-frames/--height/--width and
--latent-shape, --num-inference-steps and --total-steps; either may be given, or both when they
agree. --nproc meets torchrun's world size, --device the machine. The CLI's commands build their
configs with run_config and simulate_config, so a flag and a keyword can never drift apart.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ppsvd.bench.defaults import BENCH_NUM_SAMPLES, BENCH_SEED
from ppsvd.config import (
    DEFAULT_LATENT_SHAPE,
    DEFAULT_MODEL_ID,
    DEFAULT_TOTAL_STEPS,
    OPTION_NAMES,
    SYNTHETIC_MODEL,
    TINY_MODEL,
    RunConfig,
    SampleInput,
    auto_device,
    check_latent_shape,
    check_positive,
    default_latent_shape,
)
from ppsvd.environment import env_world
from ppsvd.errors import ConfigError, Interrupted, PpsvdError
from ppsvd.io.images import resolve_images
from ppsvd.io.inputs import read_inputs
from ppsvd.models import pixels

ImageLike = str | os.PathLike
"""An image file, a directory of images, a glob, or an http(s) URL."""

KEYWORD_FIELDS = {
    "model_id": "model",
    "num_frames": "latent_shape",
    "height": "latent_shape",
    "width": "latent_shape",
    "num_inference_steps": "total_steps",
    "timeout": "timeout_s",
    "stall_timeout": "stall_timeout_s",
    "progress_interval": "progress_interval_s",
    "progress": "show_progress",
    "torch_dtype": "dtype",
}
"""An API keyword -> the RunConfig field it sets, where the names differ (what --resume compares)."""


def explicit_fields(options: dict[str, Any]) -> dict[str, str]:
    """The RunConfig fields a call's keywords set -> the keyword (for resume=, like the CLI's flags)."""
    return {KEYWORD_FIELDS.get(name, name): name for name, value in options.items() if value is not None}


def resolve_nproc(nproc: int | None, default: int = 1) -> int:
    """nproc, or the torchrun world size; both given must agree."""
    world = env_world()
    if world is None:
        return default if nproc is None else nproc
    if nproc is not None and nproc != world[1]:
        raise ConfigError(f"--nproc {nproc} differs from torchrun's world size {world[1]}; drop --nproc under torchrun")
    return world[1]


def resolve_device(device: str | None) -> str:
    """device, or cuda when torch sees a GPU, else cpu."""
    if device is not None:
        return device
    import torch  # heavy: only when the device must be detected

    return auto_device(torch.cuda.is_available())


def run_config(
    images: ImageLike | Iterable[ImageLike] | None = None,
    *,
    inputs: str | os.PathLike | Sequence[SampleInput | dict[str, Any]] | None = None,
    model_id: str = DEFAULT_MODEL_ID,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    total_steps: int | None = None,
    latent_shape: Sequence[int] | None = None,
    num_samples: int | None = None,
    nproc: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    torch_dtype: Any = None,
    timeout: float = 600.0,
    progress: bool = True,
    **options: Any,
) -> RunConfig:
    """The RunConfig of `ppsvd run` (see ppsvd.run for the arguments), checked."""
    options = _documented_names(options)
    options["weights"] = resolve_weights(model_id, options.get("weights"))
    image_list = resolve_images(_as_list(images)) if images is not None else ()
    if inputs is None:
        entries: tuple[SampleInput, ...] = ()
    elif isinstance(inputs, (str, os.PathLike)):
        entries = read_inputs(inputs)
    else:
        entries = tuple(item if isinstance(item, SampleInput) else SampleInput(**item) for item in inputs)
    return RunConfig.from_options(
        model=model_id,
        images=image_list,
        inputs=entries,
        latent_shape=resolve_latent_shape(
            model_id,
            latent_shape,
            num_frames=num_frames,
            height=height,
            width=width,
            weights=options.get("weights") or "pretrained",
            revision=options.get("revision"),
        ),
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        num_samples=resolve_num_samples(num_samples, len(entries or image_list)),
        nproc=resolve_nproc(nproc),
        device=resolve_device(device),
        dtype=resolve_dtype(dtype, torch_dtype),
        timeout_s=timeout,
        show_progress=progress,
        **options,
    ).validate()


def simulate_config(
    *,
    model_id: str = SYNTHETIC_MODEL,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    total_steps: int | None = None,
    latent_shape: Sequence[int] | None = DEFAULT_LATENT_SHAPE,
    num_samples: int = 8,
    nproc: int | None = None,
    device: str | None = "cpu",
    dtype: str | None = None,
    torch_dtype: Any = None,
    step_ms: float = 20.0,
    timeout: float = 600.0,
    progress: bool = True,
    **options: Any,
) -> RunConfig:
    """The RunConfig of `ppsvd simulate` (see ppsvd.simulate for the arguments), checked."""
    options = _documented_names(options)
    if any(v is not None for v in (num_frames, height, width)) and tuple(latent_shape or ()) == DEFAULT_LATENT_SHAPE:
        latent_shape = None  # diffusers' names given: they replace parts of the default shape
    return RunConfig.from_options(
        model=model_id,
        latent_shape=resolve_latent_shape(
            model_id,
            latent_shape,
            num_frames=num_frames,
            height=height,
            width=width,
            weights=options.get("weights") or "pretrained",
        ),
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        num_samples=num_samples,
        nproc=resolve_nproc(nproc, default=4),
        device=device or "cpu",
        dtype=resolve_dtype(dtype, torch_dtype) or "fp32",
        step_ms=step_ms if model_id == SYNTHETIC_MODEL else 0.0,
        timeout_s=timeout,
        show_progress=progress,
        save_video=False,
        **options,
    ).validate()


def bench_config(
    *,
    device: str,
    model_id: str,
    weights: str = "pretrained",
    total_steps: int | None = None,
    num_inference_steps: int | None = None,
    latent_shape: Sequence[int] | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_samples: int = BENCH_NUM_SAMPLES,
    seed: int = BENCH_SEED,
    timeout: float = 600.0,
    output_dir: str | os.PathLike = "ppsvd-bench",
    **options: Any,
) -> RunConfig:
    """The base RunConfig of `ppsvd bench` (every run's but its count and strategy; each run's
    config is checked by BenchPlan.validate): the benchmark's defaults, no progress bars."""
    weights = resolve_weights(model_id, weights)
    return RunConfig.from_options(
        model=model_id,
        weights=weights,
        total_steps=resolve_total_steps(total_steps, num_inference_steps),
        latent_shape=resolve_latent_shape(
            model_id, latent_shape, num_frames=num_frames, height=height, width=width, weights=weights
        ),
        num_samples=num_samples,
        seed=seed,
        device=device,
        timeout_s=timeout,
        output_dir=Path(output_dir),
        show_progress=False,
        **options,
    )


def resolve_weights(model: str, weights: str | None) -> str:
    """--weights, as config.json records it: the embedded tiny SVD's weights are seeded random
    whatever --weights says (so config.json and the manifest agree); otherwise the default pretrained."""
    if model == TINY_MODEL:
        return "random"
    return weights or "pretrained"


def _as_list(value: ImageLike | Iterable[ImageLike]) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def resolve_latent_shape(
    model: str,
    latent_shape: Any = None,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    weights: str = "pretrained",
    revision: str | None = None,
) -> tuple[int, int, int, int, int]:
    """One B C F H W from the benchmark's --latent-shape and diffusers' num_frames/height/width.

    Either may be given, or both when they agree (conflicting values name both flags). What is
    not given keeps the default (14 frames at 512x512; tiny: its own small shape). Pixels become
    latent cells by the model's own VAE scale factor (ppsvd.models.pixels; read only when a
    height or width is given), and must also pass diffusers' check_inputs (multiples of 8).
    """
    for flag, value in (("--num-frames", num_frames), ("--height", height), ("--width", width)):
        if value is not None:
            check_positive(flag, value)
    if height is None and width is None:
        factor = pixels.NO_VAE_FACTOR  # unused: no pixel size to convert
    else:
        factor = pixels.model_scale_factor(model, weights=weights, revision=revision)
    cells = {
        flag: pixels.latent_cells(flag, value, factor, model)
        for flag, value in (("--height", height), ("--width", width))
        if value is not None
    }
    if latent_shape is None:
        b, c, f, h, w = default_latent_shape(model)
        return (b, c, num_frames or f, cells.get("--height", h), cells.get("--width", w))
    shape = check_latent_shape(latent_shape)
    b, c, f, h, w = shape
    text = " ".join(map(str, shape))
    for flag, value, implied, part in (
        ("--num-frames", num_frames, f, f"F={f}"),
        ("--height", height, h * factor, f"H={h}"),
        ("--width", width, w * factor, f"W={w}"),
    ):
        if value is not None and value != implied:
            raise ConfigError(
                f"{flag} {value} conflicts with --latent-shape {text} ({part} means {flag} {implied}); "
                "give one of them, or values that agree"
            )
    return shape


def resolve_total_steps(total_steps: int | None = None, num_inference_steps: int | None = None) -> int:
    """--total-steps (the benchmark's name) or --num-inference-steps (diffusers'); both only if equal."""
    if total_steps is not None and num_inference_steps is not None and total_steps != num_inference_steps:
        raise ConfigError(
            f"--num-inference-steps {num_inference_steps} conflicts with --total-steps {total_steps}; they are the "
            "same setting (diffusers' name and the benchmark guide's): give one of them"
        )
    for flag, value in (("--total-steps", total_steps), ("--num-inference-steps", num_inference_steps)):
        if value is not None:
            check_positive(flag, value)  # named as the caller named it
            return value
    return DEFAULT_TOTAL_STEPS


def resolve_num_samples(num_samples: int | None, inputs: int) -> int:
    """--num-samples, or one sample per input image when it is not given (at least one)."""
    if num_samples is not None:
        return num_samples
    return max(1, inputs)


# -- the Python API's own words --------------------------------------------------------------------

TORCH_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}
"""torch_dtype= as from_pretrained takes it (torch.float16 or "float16") -> ppsvd's dtype name."""


def resolve_dtype(dtype: str | None, torch_dtype: Any = None) -> str | None:
    """dtype ('fp16', 'bf16', 'fp32'; None: the device's default), or diffusers' torch_dtype=
    (torch.float16, "float16", "auto"); both only when they agree."""
    if torch_dtype is None or str(torch_dtype) == "auto":
        return dtype
    name = str(torch_dtype).removeprefix("torch.")
    mapped = TORCH_DTYPES.get(name)
    if mapped is None:
        raise ConfigError(
            f"torch_dtype={torch_dtype!r} is not a dtype ppsvd runs; use torch.float16, torch.bfloat16 or torch.float32"
        )
    if dtype is not None and dtype != mapped:
        raise ConfigError(f"torch_dtype={torch_dtype} conflicts with dtype={dtype!r}; give one of them")
    return mapped


def _documented_names(options: dict[str, Any]) -> dict[str, Any]:
    """The keywords named after the CLI's flags (stall_timeout, progress_interval) -> RunConfig's fields."""
    renamed = dict(options)
    for keyword in ("stall_timeout", "progress_interval"):
        if keyword in renamed:
            renamed[KEYWORD_FIELDS[keyword]] = renamed.pop(keyword)
    return renamed


def check_keywords(function: str, options: dict[str, Any], *signatures: Any) -> None:
    """An unknown keyword -> TypeError naming it and the closest accepted ones, as Python would
    (ppsvd.run(torch_dtype=...) is accepted; ppsvd.run(num_frame=...) suggests num_frames)."""
    accepted = set(OPTION_NAMES) | set(KEYWORD_FIELDS)
    for signature in signatures:
        accepted |= {name for name, p in inspect.signature(signature).parameters.items() if p.kind != p.VAR_KEYWORD}
    accepted -= {"extra", "show_progress", "timeout_s", "stall_timeout_s", "progress_interval_s"}
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else "; see help(ppsvd.run) for the keywords"
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}{hint}")


FLAG_KEYWORDS = {"model": "model_id", "image": "images", "no-progress": "progress=False"}
"""A flag -> the keyword of the Python API where it is not the flag's name with _ for - (the one mapping)."""

_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: (-?\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.,]| -?\d))?")


def in_keywords(message: str) -> str:
    """A message written with the CLI's flags, in the Python API's keywords: `--num-frames 0 must
    be positive` -> `num_frames=0 must be positive`, `drop --nproc` -> `drop nproc`. Quoted
    command lines (between backticks) stay as they are."""

    def keyword(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        word = FLAG_KEYWORDS.get(name, name.replace("-", "_"))
        return word if value is None else f"{word}={value}"

    parts = message.split("`")
    return "`".join(part if k % 2 else _FLAG.sub(keyword, part) for k, part in enumerate(parts))


@contextlib.contextmanager
def keyword_errors(function: str, command: str) -> Iterator[None]:
    """Errors raised to a Python caller name keyword arguments, not flags; an interrupted run says
    how to resume from Python (`ppsvd.run(resume=...)`). The same exception, its message reworded."""
    try:
        yield
    except Interrupted as exc:
        if exc.run_dir is not None:
            shell = f"ppsvd {command} --resume "
            text = str(exc)
            if shell in text:
                exc.args = (text[: text.index(shell)] + f"ppsvd.{function}(resume={str(exc.run_dir)!r})",)
        raise
    except PpsvdError as exc:
        exc.args = (in_keywords(str(exc)),)
        raise
