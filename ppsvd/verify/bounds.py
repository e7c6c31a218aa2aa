"""How far from diffusers' own results each layout may be: the one definition of ppsvd's exactness
contract, used by `ppsvd verify`, the tests and the docs (docs/benchmarking.md, "Exactness").

The measure is the max relative difference of a sample's final latent,

    max |ppsvd - diffusers| / max |diffusers|      (over every element of the latent),

against what diffusers' StableVideoDiffusionPipeline returns for the same image, seed and settings.

- Pipeline and data layouts, eager UNet (the default): bitwise equal latents and frames, for any N,
  split and transport. No bound: a single differing bit fails.
- The guidance split (`--strategy cfg`): each half runs the UNet at batch B where diffusers runs
  2B, and kernels block a batch-2 call differently, so the last bits differ.
- `--compile`: torch.compile's kernels fuse and reorder floating-point operations.

Bounds per dtype. fp32 ones were measured on CPU (tiny SVD; the numbers beside each); fp16 and
bf16 ones have not been measured on a GPU yet: they are provisional, set from the dtype's
precision (fp16 keeps 11 significant bits, so ~5e-4 per rounding; bf16 8 bits), and
`benchmarks/gpu_acceptance.sh` reports the measured differences next to them. A layout with both
(a compiled guidance pair) may differ by the sum.
"""

from __future__ import annotations

GUIDANCE_SPLIT_BOUND: dict[str, float] = {
    # measured 2.4e-6 to 3.1e-6 (tiny SVD, 4 and 6 steps, final latents; one UNet call 8e-7, SVD-XT 9.5e-7)
    "fp32": 1e-5,
    "fp16": 2e-2,  # provisional
    "bf16": 1e-1,  # provisional
}
"""--strategy cfg against diffusers, by dtype."""

COMPILE_BOUND: dict[str, float] = {
    # measured on CPU with inductor (tiny SVD, torch 2.13): 1.9e-6 to 5.0e-6 over 4 to 25 steps,
    # B = 1 and 2; a compiled guidance pair 1.3e-6 to 2.9e-6 (docs/benchmarking.md, "Exactness")
    "fp32": 5e-5,
    "fp16": 2e-2,  # provisional
    "bf16": 1e-1,  # provisional
}
"""--compile against diffusers' eager pipeline, by dtype."""


def layout_bound(dtype: str, *, guidance_split: bool, compiled: bool) -> float | None:
    """The bound a layout is held to (None: bitwise equality)."""
    bound = 0.0
    if guidance_split:
        bound += GUIDANCE_SPLIT_BOUND[dtype]
    if compiled:
        bound += COMPILE_BOUND[dtype]
    return bound or None


def describe_bound(bound: float | None) -> str:
    """'bitwise' or '<= 1e-05 relative'."""
    return "bitwise" if bound is None else f"<= {bound:.0e} relative"
