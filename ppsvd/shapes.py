"""The latent's shape, and the one place that says how it is laid out between stages.

Users give --latent-shape as B C F H W (the benchmark's order); diffusers' SVD pipeline holds the
latent frames-first, B F C H W, and that is how it travels between stages and is saved.
"""

from __future__ import annotations

from typing import NamedTuple

HANDOFF_LAYOUT = "B F C H W"
"""The axis order of every latent that travels between stages or is saved (diffusers' own)."""


class LatentShape(NamedTuple):
    """--latent-shape: videos per sample, latent channels, frames, latent height and width."""

    b: int
    c: int
    f: int
    h: int
    w: int

    def handoff(self, batch: int | None = None) -> tuple[int, int, int, int, int]:
        """The shape in HANDOFF_LAYOUT; `batch` replaces B (e.g. 2B with classifier-free guidance)."""
        return (self.b if batch is None else batch, self.f, self.c, self.h, self.w)

    @property
    def numel(self) -> int:
        return self.b * self.c * self.f * self.h * self.w

    def text(self) -> str:
        """'1 4 14 64 64', as --latent-shape takes it."""
        return " ".join(map(str, self))
