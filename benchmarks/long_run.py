"""Is the cost per sample flat over a long run? Throughput of the last 1,000 samples against the first.

    python benchmarks/long_run.py [--num-samples 20000] [--nproc 2] [--step-ms 1] [--total-steps 4]
        [--latent-shape 1 4 1 8 8] [--transport gloo] [--window 1000]

Synthetic model, tiny latent: a step costs --step-ms of wall time, so what grows with the run
(the manifest, the timeline, anything kept per sample) shows up as falling throughput. The
throughput of a window is window / (completion of its last sample - completion of its first),
from the manifest's completion times. The issue's target: last >= 0.9 x first. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def window_throughput(completed: list[float], window: int) -> tuple[float, float]:
    """(first window's samples/s, last window's samples/s) from sorted completion times."""
    first = completed[:window]
    last = completed[-window:]
    return (window - 1) / (first[-1] - first[0]), (window - 1) / (last[-1] - last[0])


def main() -> None:
    from ppsvd.config import RunConfig
    from ppsvd.runtime.launch import launch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=20_000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--step-ms", type=float, default=1.0)
    parser.add_argument("--total-steps", type=int, default=4)
    parser.add_argument("--latent-shape", type=int, nargs=5, default=[1, 4, 1, 8, 8])
    parser.add_argument("--transport", default="gloo")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()

    out = args.output_dir or Path(tempfile.mkdtemp(prefix="ppsvd-long-"))
    config = RunConfig.from_options(
        model="synthetic",
        total_steps=args.total_steps,
        latent_shape=tuple(args.latent_shape),
        num_samples=args.num_samples,
        nproc=args.nproc,
        transport=args.transport,
        step_ms=args.step_ms,
        output_dir=out,
        show_progress=False,
        timeout_s=120.0,
    ).validate()
    started = time.time()
    result = launch(config)
    wall = time.time() - started
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    completed = sorted(e["completed"] for e in manifest["samples"])
    first, last = window_throughput(completed, args.window)
    print(
        f"{len(completed)} samples, {args.nproc} stages, {args.total_steps} steps of {args.step_ms:g} ms, "
        f"latent {' '.join(map(str, args.latent_shape))}, {args.transport}; wall {wall:.1f} s"
    )
    print(
        f"first {args.window}: {first:.1f} samples/s; last {args.window}: {last:.1f} samples/s; "
        f"ratio {last / first:.3f} (target >= 0.9)"
    )
    print(f"outputs: {result.run_dir}")


if __name__ == "__main__":
    main()
