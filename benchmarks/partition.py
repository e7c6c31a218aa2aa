"""Even vs cost-aware (--partition auto) splits on CPU, with the synthetic model's encode and decode.

    python benchmarks/partition.py [--step-ms 33 --encode-ms 13 --decode-ms 98] [--total-steps 28]
        [--num-samples 40] [--nprocs 2,4,7] [--transport zmq] [--no-speed-case]

The defaults are the issue's H200 profile of SVD-XT at 14 frames 512x512 (165 ms per step,
65 ms image encode, 490 ms VAE decode) scaled to 1/5, T = 28, 40 samples, latent 1 4 14 64 64.
Each configuration is one fresh launch of `ppsvd simulate`'s workers. Efficiency = steady
throughput(N) / (N x steady throughput of the measured 1-stage run); "planned" is what
ppsvd.planning.costs.forecast predicts for that partition with the model's declared costs; "vs plan" =
measured / planned; "stage err" is the largest |measured - planned| / planned over stages of
the time per sample (median over samples). Then the mixed-GPU case: --stage-speed 1,1,1,0.5 at
N = 4. Not a test: it prints tables for the docs and notes.
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
    from ppsvd.commands.options import parse_float_list
    from ppsvd.config import RunConfig
    from ppsvd.runtime.launch import launch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=33.0)
    parser.add_argument("--encode-ms", type=float, default=13.0)
    parser.add_argument("--decode-ms", type=float, default=98.0)
    parser.add_argument("--total-steps", type=int, default=28)
    parser.add_argument("--num-samples", type=int, default=40)
    parser.add_argument("--nprocs", default="2,4,7")
    parser.add_argument("--transport", default="zmq")
    parser.add_argument("--latent-shape", type=int, nargs=5, default=[1, 4, 14, 64, 64])
    parser.add_argument("--speeds", default="1,1,1,0.5", help="the mixed-GPU case (its length is N); empty to skip")
    parser.add_argument("--output-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    out = Path(args.output_dir or tempfile.mkdtemp(prefix="ppsvd-partition-"))

    def measure(n: int, partition: str, speeds: tuple[float, ...] = ()):
        config = RunConfig.from_options(
            model="synthetic",
            total_steps=args.total_steps,
            latent_shape=tuple(args.latent_shape),
            num_samples=args.num_samples,
            nproc=n,
            transport=args.transport,
            step_ms=args.step_ms,
            encode_ms=args.encode_ms,
            decode_ms=args.decode_ms,
            stage_speed=speeds,
            partition=partition,
            output_dir=out,
            show_progress=False,
            save_latents=False,
        ).validate()
        tag = f"n{n}-{partition}" + ("-speeds" if speeds else "")
        result = launch(config, out / tag)
        return summarize(RunTimeline.load(result.run_dir / "timeline.json"), wall_s=result.wall_s)

    def stage_err(m) -> float:
        return max(abs(st.median_sample_s - st.predicted_sample_s) / st.predicted_sample_s for st in m.stages)

    base = measure(1, "even")
    one = base.steady_throughput
    print(f"N=1: {one:.4f} samples/s (planned {base.predicted_throughput:.4f})", flush=True)
    rows = [("1", "-", base, 1.0)]
    for n in parse_int_list("--nprocs", args.nprocs):
        for partition in ("even", "auto"):
            m = measure(n, partition)
            rows.append((str(n), partition, m, m.steady_throughput / (n * one)))
            print(
                f"N={n} {partition}: {m.steady_throughput:.4f} samples/s, efficiency {rows[-1][3]:.3f}, "
                f"planned {m.predicted_throughput:.4f}, split {m.partition}",
                flush=True,
            )
    speed_rows = []
    if args.speeds:
        speeds = parse_float_list("--speeds", args.speeds)
        for partition in ("even", "auto"):
            m = measure(len(speeds), partition, speeds)
            speed_rows.append((partition, m))
            print(
                f"speeds {args.speeds} {partition}: {m.steady_throughput:.4f} samples/s, planned "
                f"{m.predicted_throughput:.4f}",
                flush=True,
            )

    print()
    print(
        f"step {args.step_ms:g} ms, encode {args.encode_ms:g} ms, decode {args.decode_ms:g} ms, T={args.total_steps}, "
        f"{args.num_samples} samples, {args.transport}, latent {' '.join(map(str, args.latent_shape))}"
    )
    print(
        "| N | partition | split | steady samples/s | planned samples/s | vs plan | efficiency | planned efficiency | "
        "stage err |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    planned_one = base.predicted_throughput
    for n, partition, m, eff in rows:
        planned_eff = m.predicted_throughput / (int(n) * planned_one)
        print(
            f"| {n} | {partition} | {m.partition.split(' ')[0]} | {m.steady_throughput:.3f} | "
            f"{m.predicted_throughput:.3f} | "
            f"{m.vs_plan:.3f} | {eff:.3f} | {planned_eff:.3f} | {100 * stage_err(m):.1f}% |"
        )
    by = {(n, p): m for n, p, m, _ in rows}
    for n in {n for n, _, _, _ in rows if n != "1"}:
        print(
            f"N={n}: auto / even throughput = "
            f"{by[(n, 'auto')].steady_throughput / by[(n, 'even')].steady_throughput:.3f}"
        )
    if speed_rows:
        print()
        print(f"--stage-speed {args.speeds}")
        print("| partition | split | steady samples/s | planned samples/s | vs plan | stage err |")
        print("|---|---|---|---|---|---|")
        for partition, m in speed_rows:
            print(
                f"| {partition} | {m.partition.split(' ')[0]} | {m.steady_throughput:.3f} | "
                f"{m.predicted_throughput:.3f} | "
                f"{m.vs_plan:.3f} | {100 * stage_err(m):.1f}% |"
            )
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
