"""The API's shapes: OpenAI's video object and error JSON, and the checks of a job request (pure).

A request's fields arrive as multipart form fields (what the official `openai` client sends,
its extra_body included, next to the `input_reference` file) or as a JSON object; both go
through parse_job. Every bad value is an ApiError naming the field, the value and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ppsvd.config import RunConfig

MAX_PROMPT_CHARS = 32_000
MAX_SEED = 2**63 - 1
JOB_ID = re.compile(r"video_[0-9a-f]{32}")
"""Ids are made by the server (secrets.token_hex); anything else is no job's."""
CONTENT_VARIANTS = {"video": "video/mp4", "thumbnail": "image/png", "latents": "application/octet-stream"}
"""GET /v1/videos/{id}/content?variant=...: the MP4, the first frame (PNG), the final latents (safetensors)."""


class ApiError(Exception):
    """An error response in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


@dataclass(frozen=True)
class Served:
    """What this server makes: fixed at start (shape, steps, model), and the per-job defaults."""

    model: str
    width: int
    height: int
    frames: int
    steps: int
    fps: int
    video_fps: int | None
    motion_bucket_id: int
    noise_aug_strength: float
    min_guidance_scale: float
    max_guidance_scale: float

    @staticmethod
    def from_config(config: RunConfig, pixel_scale: int) -> Served:
        _, _, f, h, w = config.job.latent_shape
        svd = config.svd
        return Served(
            model=config.model.model,
            width=w * pixel_scale,
            height=h * pixel_scale,
            frames=f,
            steps=config.job.total_steps,
            fps=svd.fps,
            video_fps=config.output.video_fps,
            motion_bucket_id=svd.motion_bucket_id,
            noise_aug_strength=svd.noise_aug_strength,
            min_guidance_scale=svd.min_guidance_scale,
            max_guidance_scale=svd.max_guidance_scale,
        )

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def guided(self) -> bool:
        """Classifier-free guidance is on (max scale > 1): it decides the hand-off shapes, so jobs keep it."""
        return self.max_guidance_scale > 1

    def seconds(self, fps: int) -> float:
        """How long a video plays: its frames at the MP4's frame rate (--video-fps, else the job's fps)."""
        return self.frames / (self.video_fps or fps)


@dataclass(frozen=True)
class ImageRef:
    """Where a request's image is: uploaded bytes, or a URL (data: or http(s):)."""

    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class JobParams:
    """A checked request: everything a job needs besides its image."""

    prompt: str
    seed: int | None
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    min_guidance_scale: float
    max_guidance_scale: float

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "fps": self.fps,
            "motion_bucket_id": self.motion_bucket_id,
            "noise_aug_strength": self.noise_aug_strength,
            "min_guidance_scale": self.min_guidance_scale,
            "max_guidance_scale": self.max_guidance_scale,
        }


# Fields a request may carry: OpenAI's, and SVD's own (diffusers' names) as extra fields.
_OPENAI_FIELDS = ("prompt", "model", "size", "seconds", "input_reference")
_SVD_FIELDS = (
    "seed",
    "fps",
    "motion_bucket_id",
    "noise_aug_strength",
    "min_guidance_scale",
    "max_guidance_scale",
    "num_inference_steps",
    "num_frames",
    "height",
    "width",
)


def parse_job(fields: dict[str, Any], served: Served) -> JobParams:
    """Check a request's fields (form values are strings, JSON values may be numbers) against
    what this server makes; ApiError 400 naming the first bad one."""
    known = set(_OPENAI_FIELDS) | set(_SVD_FIELDS) | {"input_reference[image_url]", "input_reference[file_id]"}
    for name in fields:
        if name not in known:
            raise ApiError(
                400,
                f"unknown field {name!r}; a job takes {', '.join(_OPENAI_FIELDS)} and SVD's {', '.join(_SVD_FIELDS)}",
                param=name,
                code="unknown_parameter",
            )
    prompt = fields.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt must be text of at most {MAX_PROMPT_CHARS} characters", param="prompt")
    model = fields.get("model")
    if model is not None and model != served.model:
        raise ApiError(
            400,
            f"model {model!r} is not served here; this server runs {served.model!r} (GET /v1/models), "
            "send that or leave model out",
            param="model",
            code="model_not_found",
        )
    _check_same(fields, "size", served.size, _text, "this server makes {served} videos (ppsvd serve --width/--height)")
    for name, value, flag in (
        ("num_frames", served.frames, "--num-frames"),
        ("height", served.height, "--height"),
        ("width", served.width, "--width"),
        ("num_inference_steps", served.steps, "--num-inference-steps"),
    ):
        _check_same(fields, name, value, _integer, f"this server is started with {flag} {{served}}")

    seed = _optional(fields, "seed", _integer)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"seed {seed} is outside 0..{MAX_SEED}; pick a seed in that range", param="seed")
    fps = _optional(fields, "fps", _integer, served.fps)
    if fps < 1 or fps > 1000:
        raise ApiError(400, f"fps {fps} is outside 1..1000 (SVD sees fps - 1; default {served.fps})", param="fps")
    motion = _optional(fields, "motion_bucket_id", _integer, served.motion_bucket_id)
    if not 0 <= motion <= 255:
        raise ApiError(
            400, f"motion_bucket_id {motion} is outside 0..255; pick a value in that range", param="motion_bucket_id"
        )
    noise = _optional(fields, "noise_aug_strength", _number, served.noise_aug_strength)
    if noise < 0:
        raise ApiError(
            400,
            f"noise_aug_strength {noise:g} is negative; use a value >= 0 (default {served.noise_aug_strength:g})",
            param="noise_aug_strength",
        )
    lo = _optional(fields, "min_guidance_scale", _number, served.min_guidance_scale)
    hi = _optional(fields, "max_guidance_scale", _number, served.max_guidance_scale)
    if lo > hi:
        raise ApiError(
            400, f"min_guidance_scale {lo:g} is above max_guidance_scale {hi:g}; swap them", param="min_guidance_scale"
        )
    if (hi > 1) != served.guided:
        side = "above 1 (guidance on)" if served.guided else "at most 1 (guidance off)"
        raise ApiError(
            400,
            f"max_guidance_scale {hi:g}: this server runs with classifier-free guidance "
            f"{'on' if served.guided else 'off'}, which fixes the pipeline's tensor shapes; keep it {side}",
            param="max_guidance_scale",
        )
    if served.frames == 1 and lo <= 1 < hi:
        raise ApiError(
            400,
            "with one frame, min_guidance_scale and max_guidance_scale must be on the same side of 1",
            param="min_guidance_scale",
        )
    seconds = fields.get("seconds")
    if seconds is not None:
        value = _number("seconds", seconds)
        if value <= 0 or round(value * (served.video_fps or fps)) != served.frames:
            rate = served.video_fps or fps
            raise ApiError(
                400,
                f"seconds {seconds} at {rate} frames per second is {round(value * rate)} frames; this server makes "
                f"{served.frames} frames per video ({served.seconds(fps):.4g} s at that rate): send seconds "
                f"{served.seconds(fps):.4g} or leave it out",
                param="seconds",
            )
    return JobParams(
        prompt=prompt,
        seed=seed,
        fps=fps,
        motion_bucket_id=motion,
        noise_aug_strength=noise,
        min_guidance_scale=lo,
        max_guidance_scale=hi,
    )


def image_ref(fields: dict[str, Any], upload: bytes | None) -> ImageRef:
    """The request's image: an uploaded file, or input_reference {"image_url": ...} (JSON, or the
    form field input_reference[image_url]); ApiError when there is none or it names a file id."""
    if upload is not None:
        return ImageRef(data=upload)
    ref = fields.get("input_reference")
    url = fields.get("input_reference[image_url]")
    if fields.get("input_reference[file_id]") is not None or (isinstance(ref, dict) and "file_id" in ref):
        raise ApiError(
            400,
            "input_reference by file_id is not supported; upload the image file as input_reference",
            param="input_reference",
        )
    if isinstance(ref, dict):
        url = ref.get("image_url")
    elif isinstance(ref, str):
        url = ref
    if not url:
        raise ApiError(
            400,
            "input_reference is required: SVD makes a video from an image; upload it as the multipart file "
            'input_reference, or send {"input_reference": {"image_url": "data:image/png;base64,..."}}',
            param="input_reference",
        )
    if not isinstance(url, str):
        raise ApiError(400, "input_reference.image_url must be a string (a data: URL)", param="input_reference")
    return ImageRef(url=url)


def video_object(
    job, served: Served, live: dict[str, Any] | None = None, position: int | None = None
) -> dict[str, Any]:
    """A job as OpenAI's video object, plus SVD's fields and where the job is (queue_position,
    stage, step) while it runs."""
    params = job.params
    progress = 100 if job.status == "completed" else int((live or {}).get("progress", 0))
    obj: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "status": job.status,
        "progress": progress,
        "created_at": int(job.created_at),
        "completed_at": int(job.completed_at) if job.completed_at is not None and job.status == "completed" else None,
        "expires_at": None,
        "error": {"code": job.error_code, "message": job.error_message} if job.status == "failed" else None,
        "model": served.model,
        "prompt": params.get("prompt") or None,
        "remixed_from_video_id": None,
        "seconds": f"{served.seconds(params['fps']):.4g}",
        "size": served.size,
        # SVD's own: what the video was made with, and where the job is.
        "seed": params.get("seed"),
        "fps": params["fps"],
        "motion_bucket_id": params["motion_bucket_id"],
        "noise_aug_strength": params["noise_aug_strength"],
        "min_guidance_scale": params["min_guidance_scale"],
        "max_guidance_scale": params["max_guidance_scale"],
        "num_frames": served.frames,
        "num_inference_steps": served.steps,
    }
    if job.status == "queued" and position is not None:
        obj["queue_position"] = position
    if job.status == "completed":
        obj["variants"] = sorted(job.outputs or {})  # what GET .../content?variant= can give (synthetic: latents)
    if job.status == "in_progress" and live:
        obj["stage"] = live.get("stage")
        obj["step"] = live.get("step")
    # When it was accepted and when stage 0 took it (unix seconds, unrounded: a page's queue and
    # run times), then, once done, when its stages took, prepared, completed and wrote it.
    obj["timings"] = {"created": job.created_at, "started": job.started_at, **(job.timings or {})}
    return obj


def check_job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(
            404, f"no video {job_id!r}: ids look like video_ and 32 hex digits", param="video_id", code="not_found"
        )
    return job_id


def list_params(query: dict[str, str]) -> tuple[str | None, int, str]:
    """GET /v1/videos: after (an id), limit (1..100, default 20), order (asc | desc, default desc)."""
    for name in query:
        if name not in ("after", "limit", "order"):
            raise ApiError(400, f"unknown query parameter {name!r}; use after, limit, order", param=name)
    limit = _integer("limit", query.get("limit", "20"))
    if not 1 <= limit <= 100:
        raise ApiError(400, f"limit {limit} is outside 1..100", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order {order!r} is not asc or desc", param="order")
    after = query.get("after")
    if after is not None:
        check_job_id(after)
    return after, limit, order


def content_variant(query: dict[str, str]) -> str:
    variant = query.get("variant", "video")
    if variant not in CONTENT_VARIANTS:
        raise ApiError(
            400,
            f"variant {variant!r} is not available; this server has {', '.join(CONTENT_VARIANTS)} "
            "(latents: the final latent as safetensors)",
            param="variant",
        )
    return variant


# -- value parsers: form fields are strings, JSON may give numbers -----------------------------------


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {value!r}", param=name)
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", param=name)
    if isinstance(value, int):
        return value
    if not re.fullmatch(r"[+-]?\d{1,30}", value.strip()):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", param=name)
    return int(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"{name} must be a number, got {value!r}", param=name)
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {value!r}", param=name) from None
    if not math.isfinite(number):
        raise ApiError(400, f"{name} must be a finite number, got {value!r}", param=name)
    return number


def _optional(fields: dict[str, Any], name: str, parse, default=None):
    value = fields.get(name)
    return default if value is None or value == "" else parse(name, value)


def _check_same(fields: dict[str, Any], name: str, served_value, parse, fix: str) -> None:
    value = fields.get(name)
    if value is None or value == "":
        return
    got = parse(name, value)
    if got != served_value:
        raise ApiError(
            400,
            f"{name} {value} is not what this server makes: {fix.format(served=served_value)}; send {name} "
            f"{served_value} or leave it out",
            param=name,
            code="unsupported_value",
        )
