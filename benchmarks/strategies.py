"""Layouts beyond one pipeline, measured on CPU with the synthetic model, against their predictions.

    python benchmarks/strategies.py [--scale 10] [--transport zmq] [--json out.json]

Costs: SVD-XT at 25 frames 576x1024 on one H200 (fp16, random weights): a CFG step (batch 2)
627 ms, one guidance half (batch 1) 335 ms, image encode 130 ms, VAE decode 2100 ms, divided by
--scale (10: 63 / 34 / 13 / 210 ms) and spent without using the CPU (the synthetic model's
sleeps), T = 28. The latent that travels (and that guidance pairs swap every step) is the
guide's 1 4 14 64 64 in fp16 (448 KiB); decode_chunk_size 1, so a pair splits the decode evenly.

Three checks (measured from timeline.json: first compute start to last completion, so process
start-up and model load, the same for every layout, are left out):
1. per-video latency with `cfg` on 2 processes vs 1 process: <= 0.56x, within 5 % of ppsvd.planning.layouts;
2. the work queue with one half-speed worker of 4 (--stage-speed 1,1,1,0.5), 35 samples: the
   throughput >= 0.95 of the sum-of-speeds ideal (3.5 x one worker);
3. --strategy auto's choice is the measured fastest of every layout for (S=1, N=2, latency),
   (S=40, N=4, throughput) and (S=10, N=7, throughput).
Not a test: it prints tables for docs/benchmarking.md; it takes ~5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

H200_MS = {"step": 627.0, "half": 335.0, "encode": 130.0, "decode": 2100.0}


def main() -> None:
    from ppsvd.config import RunConfig
    from ppsvd.planner import apply_layout, choose_layout, layout_costs
    from ppsvd.planning.costs import CostModel
    from ppsvd.planning.layouts import predict

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--transport", default="zmq")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ms = {k: round(v / args.scale) for k, v in H200_MS.items()}
    out = Path(tempfile.mkdtemp(prefix="ppsvd-strategies-"))
    base = RunConfig.from_options(
        model="synthetic",
        total_steps=28,
        latent_shape=(1, 4, 14, 64, 64),
        dtype="fp16",
        step_ms=ms["step"],
        cfg_half_ms=ms["half"],
        encode_ms=ms["encode"],
        decode_ms=ms["decode"],
        decode_chunk_size=1,
        transport=args.transport,
        output_dir=out,
        show_progress=False,
        timeout_s=300.0,
        seed=3,
    )
    costs = CostModel.from_ms(ms["step"], ms["encode"], ms["decode"], source=f"H200 / {args.scale:g}")
    report: dict = {"costs_ms": ms, "transport": args.transport, "runs": []}
    print(f"costs (ms): {ms}; T=28; latent 1 4 14 64 64 fp16; transport {args.transport}")

    def run(config: RunConfig) -> dict:
        measured = measure(config)
        layout = config.layout_plan()
        predicted = predict(layout, layout_costs(config, costs), config.job.total_steps, config.job.num_samples)
        row = {
            "layout": layout.name(),
            "describe": layout.describe(),
            "nproc": config.layout.nproc,
            "samples": config.job.num_samples,
            **measured,
            "predicted_makespan_s": predicted.makespan_s,
            "predicted_latency_s": predicted.latency_s,
        }
        report["runs"].append(row)
        print(
            f"  {row['layout']:8s} N={config.layout.nproc} S={config.job.num_samples:3d}: makespan "
            f"{row['makespan_s']:7.3f} s "
            f"(predicted {row['predicted_makespan_s']:7.3f}), latency p50 {row['latency_s']:.3f} s "
            f"(predicted {row['predicted_latency_s']:.3f})",
            flush=True,
        )
        return row

    # 1. latency of one video: guidance pair vs one process
    print("1. per-video latency, 3 samples one after another")
    one = run(base.replace(nproc=1, num_samples=3, strategy="pipeline"))
    pair = run(base.replace(nproc=2, num_samples=3, strategy="cfg", max_in_flight=1))
    ratio = pair["latency_s"] / one["latency_s"]
    off = pair["latency_s"] / pair["predicted_latency_s"] - 1
    report["cfg_latency"] = {"ratio": ratio, "vs_prediction": off}
    print(
        f"   cfg / 1 process = {ratio:.3f} (target <= 0.56); measured vs predicted {100 * off:+.1f} % (target within 5 "
        "%)"
    )

    # 2. work queue with a half-speed worker
    print("2. work queue, 4 workers, one at half speed, 35 samples")
    queue = run(base.replace(nproc=4, num_samples=35, strategy="data", stage_speed=(1, 1, 1, 0.5)))
    single_s = costs.sample_s(28)
    ideal = 3.5 / single_s
    got = 35 / queue["makespan_s"]
    report["work_queue"] = {"throughput": got, "ideal": ideal, "fraction": got / ideal}
    print(f"   {got:.3f} samples/s vs sum-of-speeds ideal {ideal:.3f}: {got / ideal:.3f} (target >= 0.95)")

    # 3. auto's choice vs every layout measured
    print("3. --strategy auto vs every layout")
    report["auto"] = []
    for samples, n, goal in ((1, 2, "latency"), (40, 4, "throughput"), (10, 7, "throughput")):
        job = base.replace(nproc=n, num_samples=samples, goal=goal, strategy="auto")
        chosen, reason, forecasts = choose_layout(job, costs)
        print(f"   S={samples} N={n} {goal}: {reason}")
        measured = {f.layout.name(): run(apply_layout(job, f.layout)) for f in forecasts}
        key = "latency_s" if goal == "latency" else "makespan_s"
        fastest = min(measured, key=lambda name: measured[name][key])
        report["auto"].append(
            {
                "samples": samples,
                "nproc": n,
                "goal": goal,
                "chosen": chosen.name(),
                "fastest": fastest,
                "measured": {k: v[key] for k, v in measured.items()},
            }
        )
        print(
            f"   -> auto chose {chosen.name()}, measured fastest {fastest} "
            f"({'OK' if fastest == chosen.name() else 'MISMATCH'})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def measure(config) -> dict:
    """Launch `config`; makespan (first compute start -> last completion) and median per-video latency."""
    from ppsvd.analysis.metrics import sample_latencies, sample_starts
    from ppsvd.analysis.timeline import RunTimeline
    from ppsvd.runtime.launch import launch

    result = launch(config.validate())
    if not result.ok:
        raise SystemExit(f"{config.layout_plan().name()} failed: {result.error}")
    timeline = RunTimeline.load(result.run_dir / "timeline.json")
    done, starts = timeline.completions(), sample_starts(timeline)
    return {
        "makespan_s": max(done.values()) - min(starts.values()),
        "latency_s": statistics.median(sample_latencies(timeline).values()),
        "wall_s": result.wall_s,
    }


if __name__ == "__main__":
    main()
