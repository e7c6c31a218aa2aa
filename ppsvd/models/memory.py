"""Pure memory model: how much one stage of a planned run needs, and the largest latent shape that fits.

Shared by `ppsvd doctor` (its memory check) and the run's preflight (refuse_if_too_big).

    peak(stage) = overhead + weights(stage) + max(activations the stage runs)

    weights(stage)  = bytes(dtype) * (UNET                      on every stage
                                      + IMAGE_ENCODER + VAE      on the first stage
                                      + VAE                      on the last stage, if not also first)
    unet step       = UNET_ACT   * cfg * B*F*H*W * bytes(dtype)  every stage; cfg = 2 (classifier-free
                                                                 guidance doubles the batch, SVD's default)
    vae decode      = DECODE_ACT * B*chunk*H*W   * bytes(dtype)  last stage; chunk = F (all frames at once,
                                                                 diffusers' default decode_chunk_size)
    vae encode      = ENCODE_ACT * B*H*W         * 4             first stage; one image, in fp32
                                                                 (SVD's VAE has force_upcast)
    overhead        = CUDA context, allocator slack, NCCL buffers and the latents in flight

Activations are transient (one UNet call, or the decode), so a stage's peak holds the largest of
them, not their sum. B, F, H, W are latent sizes (pixels: H and W times the VAE scale factor,
ppsvd.models.pixels).

The constants (elements per latent position) are the peak bytes of live tensors, divided by the
latent positions and the element size, counted by `python -m ppsvd.doctor.calibrate`: it runs the
real diffusers modules built from the SVD-XT configs in ppsvd/models/configs on the meta device (no
weights, no compute) and adds up every tensor an operation creates until Python frees it, the
quantity torch.cuda.max_memory_allocated() reports minus the weights. Measured: UNet 9,034
(fused attention; the same at 32x32, 64x64 and 72x72), VAE decode 65,536, VAE encode 40,960,
all exactly linear in B*F*H*W. The constants below round up by a few percent for the caching
allocator's slack. Fused attention (PyTorch SDPA's flash or memory-efficient kernel, on every GPU
since Volta for fp16/bf16) keeps attention linear in H*W; without it (the math fallback) spatial
attention needs ~90,000 elements per position at 64x64, growing with (H*W)^2, and the estimate
is far too low. Check against a real GPU with `python -m ppsvd.doctor.calibrate --cuda`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ppsvd.models.hub import locate, stage_components, weight_params

GIB = 1024**3

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# Parameter counts, counted from the configs in ppsvd/models/configs (diffusers / transformers classes).
SVD_PARAMS = {
    "unet": 1_524_623_082,  # UNetSpatioTemporalConditionModel (SVD and SVD-XT)
    "vae": 97_742_847,  # AutoencoderKLTemporalDecoder
    "image_encoder": 632_076_800,  # CLIPVisionModelWithProjection, ViT-H/14
}
TINY_PARAMS = {"unet": 1_299_216, "vae": 405_946, "image_encoder": 114_666}

# Activation elements per latent position (see the module docstring for how they were measured).
UNET_ACT = 9_500
"""Peak live elements in one UNet call, per latent position per CFG copy (measured 9,034)."""
DECODE_ACT = 68_000
"""Peak live elements in one temporal-VAE decode, per latent position decoded at once (measured 65,536)."""
ENCODE_ACT = 43_000
"""Peak live elements in the VAE encode of the conditioning image, per latent position (measured 40,960)."""
CFG = 2
OVERHEAD_CUDA = 1 * GIB
"""Per GPU process: CUDA context (~0.3-0.5 GiB), caching-allocator slack, NCCL buffers."""
OVERHEAD_CPU = GIB // 2
"""Per CPU process: the interpreter with torch and diffusers imported."""

# Reference step time, for putting transport latency in proportion: one SVD-XT UNet step at
# 1x4x14x64x64 with CFG on a fast data-centre GPU (the fast end of design.md's 0.15-2 s). Scaled
# linearly with B*F*H*W. Using the fast end makes the reported share an upper bound.
REF_STEP_S = 0.15
REF_POSITIONS = 1 * 14 * 64 * 64


@dataclass(frozen=True, kw_only=True)
class StageMemory:
    stage: int
    weights_bytes: int
    activation_bytes: int
    activation_kind: str
    """unet, decode or encode: which activation sets the peak."""
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.overhead_bytes


def model_family(model: str) -> str:
    """synthetic, tiny or svd (every hub id or local directory is SVD-sized unless its files say otherwise)."""
    if model in ("synthetic", "tiny"):
        return model
    return "svd"


def activation_scale(params: dict[str, int]) -> float:
    """The activation constants were measured on SVD-XT; another UNet's activations scale with its
    channel width, and its parameter count with the width squared: so sqrt(params / SVD-XT's)."""
    unet = params.get("unet") or SVD_PARAMS["unet"]
    return (unet / SVD_PARAMS["unet"]) ** 0.5


@functools.lru_cache(maxsize=16)
def model_params(model: str) -> dict[str, int]:
    """Parameters per component: the embedded tiny SVD's, else counted from the weights on disk
    (a local directory or the hub cache), else SVD-XT's (a model not downloaded yet)."""
    if model_family(model) == "tiny":
        return dict(TINY_PARAMS)

    try:
        on_disk = weight_params(model, locate(model))
    except Exception:  # an unreadable cache is the loader's error to report, not the estimate's
        on_disk = {}
    return {**SVD_PARAMS, **on_disk}


def positions(shape: tuple[int, int, int, int, int]) -> int:
    b, _c, f, h, w = shape
    return b * f * h * w


def estimate_stages(
    model: str,
    dtype: str,
    shape: tuple[int, int, int, int, int],
    nproc: int,
    device: str,
    decode_chunk: int | None = None,
) -> list[StageMemory]:
    """Peak bytes of each stage 0..nproc-1 (see the module docstring for the formula).

    decode_chunk: frames the VAE decodes at a time (run's --decode-chunk-size); None: all F.
    """
    nbytes = DTYPE_BYTES[dtype]
    b, c, f, h, w = shape
    overhead = OVERHEAD_CUDA if device == "cuda" else OVERHEAD_CPU
    family = model_family(model)
    params = model_params(model) if family != "synthetic" else {}
    width = activation_scale(params)
    latent_bytes = b * c * f * h * w * nbytes
    stages = []
    for k in range(nproc):
        first, last = k == 0, k == nproc - 1
        if family == "synthetic":
            # The stand-in keeps a few latent-sized tensors: state, noise, queued hand-offs.
            stages.append(
                StageMemory(
                    stage=k,
                    weights_bytes=0,
                    activation_bytes=6 * latent_bytes,
                    activation_kind="unet",
                    overhead_bytes=overhead,
                )
            )
            continue
        count = sum(
            params.get(name, 0) for name in stage_components(first, last)
        )  # no weights: scheduler, feature extractor
        acts = {"unet": round(UNET_ACT * width * CFG * b * f * h * w * nbytes)}
        if last:
            chunk = f if decode_chunk is None else min(decode_chunk, f)
            acts["decode"] = round(DECODE_ACT * width * b * chunk * h * w * nbytes)
        if first:
            acts["encode"] = round(ENCODE_ACT * width * b * h * w * 4)
        kind = max(acts, key=lambda key: acts[key])
        # Latents in flight: received, being worked on, queued to send (max_in_flight 2), with CFG copies.
        buffers = 6 * latent_bytes
        stages.append(
            StageMemory(
                stage=k,
                weights_bytes=count * nbytes,
                activation_bytes=acts[kind] + buffers,
                activation_kind=kind,
                overhead_bytes=overhead,
            )
        )
    return stages


def per_device_need(stages: list[StageMemory], num_devices: int, stages_per_device: int = 1) -> list[int]:
    """Bytes each device must hold when stage k runs on device (k // stages_per_device) % num_devices:
    every stage on a device counts (its weights, activations and CUDA context stack)."""
    need = [0] * max(num_devices, 1)
    for s in stages:
        need[(s.stage // max(stages_per_device, 1)) % len(need)] += s.total_bytes
    return need


def fits(
    model: str,
    dtype: str,
    shape: tuple[int, int, int, int, int],
    nproc: int,
    device: str,
    capacity: list[int],
    decode_chunk: int | None = None,
    stages_per_device: int = 1,
) -> bool:
    """Every device's need is within its capacity (capacity[i]: usable bytes on device i)."""
    stages = estimate_stages(model, dtype, shape, nproc, device, decode_chunk)
    need = per_device_need(stages, len(capacity), stages_per_device)
    return all(n <= cap for n, cap in zip(need, capacity, strict=True))


def largest_fitting_shape(
    model: str,
    dtype: str,
    shape: tuple[int, int, int, int, int],
    nproc: int,
    device: str,
    capacity: list[int],
    stages_per_device: int = 1,
) -> tuple[int, int, int, int, int] | None:
    """The largest shape that fits, changing as little as possible, or None if even 1 C 1 8 8 does not.

    Order of preference: fewer videos per sample (B), then a smaller latent H and W (same aspect
    ratio, multiples of 8, as the UNet halves them three times), then fewer frames (F).
    """
    b, c, f, h, w = shape

    def ok(s: tuple[int, int, int, int, int]) -> bool:
        return fits(model, dtype, s, nproc, device, capacity, stages_per_device=stages_per_device)

    for bb in range(b, 0, -1):
        if ok((bb, c, f, h, w)):
            return (bb, c, f, h, w)
    for hh, ww in _smaller_sizes(h, w):
        if ok((1, c, f, hh, ww)):
            return (1, c, f, hh, ww)
    for ff in range(f - 1, 0, -1):
        for hh, ww in [(h, w), *_smaller_sizes(h, w)]:
            if ok((1, c, ff, hh, ww)):
                return (1, c, ff, hh, ww)
    return None


def largest_decode_chunk(
    model: str, dtype: str, shape: tuple[int, int, int, int, int], nproc: int, device: str, capacity: list[int]
) -> int | None:
    """The most frames per VAE decode with which the unchanged shape fits, or None if none does."""
    for chunk in range(shape[2] - 1, 0, -1):
        if fits(model, dtype, shape, nproc, device, capacity, decode_chunk=chunk):
            return chunk
    return None


def _smaller_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """(H, W) pairs below (h, w), largest first: H a multiple of 8 down to 8, W scaled to match."""
    sizes = []
    start = (h - 1) // 8 * 8 if h % 8 == 0 else h // 8 * 8
    for hh in range(start, 7, -8):
        ww = max(8, round(w * hh / h / 8) * 8)
        if (hh, ww) != (h, w) and (not sizes or sizes[-1] != (hh, ww)):
            sizes.append((hh, ww))
    return sizes


def estimated_step_s(shape: tuple[int, int, int, int, int]) -> float:
    """A reference SVD-XT step time for this latent shape (seconds; see REF_STEP_S)."""
    return REF_STEP_S * positions(shape) / REF_POSITIONS


def fit_refusal(
    model: str,
    dtype: str,
    shape: tuple[int, int, int, int, int],
    nproc: int,
    device: str,
    capacity: list[int],
    labels: list[str],
    decode_chunk: int | None = None,
    stages_per_device: int = 1,
) -> str | None:
    """None when every device has room for its stages; else one line: the need, what is free, and
    the largest latent shape that fits (the run's preflight refuses with it, exit code 2)."""
    stages = estimate_stages(model, dtype, shape, nproc, device, decode_chunk)
    need = per_device_need(stages, len(capacity), stages_per_device)
    over = [(label, n, cap) for label, n, cap in zip(labels, need, capacity, strict=True) if n > cap]
    if not over:
        return None
    label, n, cap = max(over, key=lambda item: item[1] / max(item[2], 1))
    usable = [int(c * 0.9) for c in capacity]
    best = largest_fitting_shape(model, dtype, shape, nproc, device, usable, stages_per_device)
    fix = (
        f"use --latent-shape {' '.join(map(str, best))}, the largest that fits"
        if best
        else "free memory first: not even the smallest latent fits"
    )
    return (
        f"--latent-shape {' '.join(map(str, shape))} at {dtype} needs ~{n / GIB:.1f} GiB on {label} but only "
        f"{cap / GIB:.1f} GiB is free; {fix} (`ppsvd doctor` shows the estimate)"
    )
