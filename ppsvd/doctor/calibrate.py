"""Re-derive the activation constants of ppsvd.models.memory (a developer tool; doctor never runs it).

    python -m ppsvd.doctor.calibrate            # meta device: counts live tensor bytes, no compute, ~1 min on CPU
    python -m ppsvd.doctor.calibrate --cuda     # a real GPU: torch.cuda.max_memory_allocated(), random weights

Both build the diffusers modules from the SVD-XT configs in ppsvd/models/configs and print, for a
few latent sizes, the peak activation memory and elements per latent position (the constants).
"""

from __future__ import annotations

import argparse
import json
import weakref
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


class _PeakLive(TorchDispatchMode):
    """Counts bytes of every tensor an op creates (not views) until Python frees it; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    n = t.numel() * t.element_size()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def _fused_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    # What a fused kernel allocates: just the output (meta has no flash kernel; its math path is N^2).
    return torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)


def _config(component: str) -> dict[str, Any]:
    path = resources.files("ppsvd") / "models" / "configs" / "svd-xt" / component / "config.json"
    return json.loads(path.read_text())


def measure(device: str, sizes: list[tuple[int, int]]) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel  # heavy: diffusers

    dt = torch.float16
    dev = torch.device(device)
    unet = UNetSpatioTemporalConditionModel.from_config(_config("unet")).to(device=dev, dtype=dt).eval()
    vae = AutoencoderKLTemporalDecoder.from_config(_config("vae")).to(device=dev, dtype=dt).eval()
    if device == "meta":
        F.scaled_dot_product_attention = _fused_sdpa  # type: ignore[assignment]

    def peak(fn: Any) -> int:
        if device == "meta":
            with _PeakLive() as p:
                fn()
            return p.peak
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    for frames, hw in sizes:
        with torch.no_grad(), torch.device(dev):
            x = torch.randn(2, frames, 8, hw, hw, dtype=dt)
            emb = torch.randn(2, 1, 1024, dtype=dt)
            ids = torch.randn(2, 3, dtype=dt)
            t = torch.tensor(10.0)
            u = peak(lambda x=x, t=t, emb=emb, ids=ids: unet(x, t, emb, ids).sample)
            z = torch.randn(frames, 4, hw, hw, dtype=dt)
            d = peak(lambda z=z, frames=frames: vae.decode(z, num_frames=frames).sample)
        pos = frames * hw * hw
        print(
            f"F={frames} H=W={hw}: unet {u / 2**20:8.1f} MiB  {u / (2 * pos) / 2:8.0f} elems/pos/cfg-copy   "
            f"decode {d / 2**20:8.1f} MiB  {d / pos / 2:8.0f} elems/pos"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="measure on cuda:0 instead of the meta device")
    args = parser.parse_args()
    measure("cuda" if args.cuda else "meta", [(14, 32), (14, 64), (25, 72)])


if __name__ == "__main__":
    main()
