"""Steady-state efficiency of the pipeline on CPU, with the synthetic model.

    python benchmarks/pipeline_efficiency.py [--step-ms 20] [--total-steps 28] [--num-samples 20]
        [--nprocs 1,2,4,7] [--transports gloo,zmq]

Each step costs --step-ms of wall time without using the CPU (like waiting for a GPU kernel),
so N stages on a 2-core machine behave like N GPUs. Efficiency(N) = steady-state throughput(N)
/ (N x steady-state throughput(1)), throughput measured from completions once the first sample
is out (ppsvd.analysis.metrics.summarize). Not a test: it prints a table for the docs and notes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    from ppsvd.analysis.metrics import summarize
    from ppsvd.analysis.timeline import RunTimeline
    from ppsvd.bench.options import parse_int_list
    from ppsvd.config import RunConfig
    from ppsvd.runtime.launch import launch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--total-steps", type=int, default=28)
    parser.add_argument("--num-samples", type=int, default=20)
    parser.add_argument("--nprocs", default="1,2,4,7")
    parser.add_argument("--transports", default="gloo,zmq")
    parser.add_argument("--latent-shape", type=int, nargs=5, default=[1, 4, 14, 64, 64])
    args = parser.parse_args()

    nprocs = parse_int_list("--nprocs", args.nprocs)
    transports = [t for t in args.transports.split(",") if t]
    out = Path(tempfile.mkdtemp(prefix="ppsvd-bench-"))
    rows = []
    for transport in transports:
        base = None
        for n in nprocs:
            config = RunConfig.from_options(
                model="synthetic",
                total_steps=args.total_steps,
                latent_shape=tuple(args.latent_shape),
                num_samples=args.num_samples,
                nproc=n,
                transport=transport,
                step_ms=args.step_ms,
                output_dir=out,
                show_progress=False,
                save_latents=False,
            ).validate()
            result = launch(config, out / f"{transport}-n{n}")
            metrics = summarize(RunTimeline.load(result.run_dir / "timeline.json"), wall_s=result.wall_s)
            if n == 1:
                base = metrics.steady_throughput
            eff = metrics.steady_throughput / (n * base) if base else float("nan")
            rows.append((transport, n, metrics.steady_throughput, eff, metrics.first_sample_latency_s, result.wall_s))
            print(
                f"{transport:5s} N={n}: steady {metrics.steady_throughput:7.3f} samples/s  efficiency {eff:.3f}",
                flush=True,
            )

    print()
    print(
        f"step {args.step_ms:g} ms, T={args.total_steps}, {args.num_samples} samples, latent "
        f"{' '.join(map(str, args.latent_shape))}"
    )
    print("| transport | N | steady samples/s | efficiency vs N x (N=1) | first-sample latency s | wall s |")
    print("|---|---|---|---|---|---|")
    for transport, n, thr, eff, first, wall in rows:
        print(f"| {transport} | {n} | {thr:.3f} | {eff:.3f} | {first:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
