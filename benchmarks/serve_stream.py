"""How well `ppsvd serve` streams jobs into the pipeline (issue 19's targets; a measurement, not a test).

    python benchmarks/serve_stream.py                 # all three parts, a markdown table at the end
    python benchmarks/serve_stream.py --soak-jobs 200 # a shorter soak

1. Throughput: the synthetic model with the H200 14-frame profile scaled 1/5 (--step-ms 33
   --encode-ms 13 --decode-ms 98), T = 28, 4 stages, --partition auto, zmq. 60 jobs posted over
   HTTP as fast as they are accepted; steady-state throughput from the jobs' completion times (the
   last stage's end of compute, as `ppsvd simulate`'s metric: (n - 1) / (last - first)) against
   `ppsvd simulate` with the same layout and costs. Target: >= 0.95.
2. Latency on an idle service: one job at a time, the time from sending the POST to the job's
   first denoising step (stage 0 took it and encoded the image: `prepared` in its timings); the
   median. Target: <= 50 ms (of which 13 ms is the emulated image encode).
3. Soak: 2,000 jobs of a tiny latent (1 4 2 8 8, no step cost) in a row through 4 stages: the
   throughput of the last 200 against the first 200 (target: within 10 %), and the server
   process's RSS at the end against after the first 200 (target: growth <= 10 %).

Everything runs on this machine's loopback; the numbers depend on how busy its cores are.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

COSTS = ("--step-ms", "33", "--encode-ms", "13", "--decode-ms", "98")
LAYOUT = ("--nproc", "4", "--total-steps", "28", "--partition", "auto", "--transport", "zmq")
SHAPE = ("--latent-shape", "1", "4", "14", "64", "64")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, state_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ppsvd", "serve", "--model-id", "synthetic", "--device", "cpu", *args]
        cmd += ["--port", str(self.port), "--state-dir", str(state_dir), "--max-queue", "100000"]
        self.log = open(state_dir.parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=ENV)
        self.client = httpx.Client(timeout=60)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if self.client.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"the server did not become ready; see {self.log.name}")

    def post(self, image: bytes, **fields) -> str:
        files = {"input_reference": ("in.png", image, "image/png")}
        while True:
            response = self.client.post(
                f"{self.url}/v1/videos", files=files, data={k: str(v) for k, v in fields.items()}
            )
            if response.status_code == 200:
                return response.json()["id"]
            if response.status_code not in (429, 503):
                raise SystemExit(f"POST failed: {response.status_code} {response.text}")
            time.sleep(float(response.headers.get("retry-after", "1")))

    def finished(self, ids: list[str], timeout_s: float) -> list[dict]:
        """Every job's video object once all are completed (paged through the list)."""
        wanted, deadline = set(ids), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found, after = {}, None
            while True:
                params = {"limit": 100, "order": "asc", **({"after": after} if after else {})}
                page = self.client.get(f"{self.url}/v1/videos", params=params).json()
                found.update({v["id"]: v for v in page["data"] if v["id"] in wanted})
                if not page["has_more"]:
                    break
                after = page["last_id"]
            if all(found.get(i, {}).get("status") == "completed" for i in ids):
                return [found[i] for i in ids]
            failed = [v for v in found.values() if v["status"] == "failed"]
            if failed:
                raise SystemExit(f"a job failed: {failed[0]['error']}")
            time.sleep(0.2)
        raise SystemExit(f"not all {len(ids)} jobs completed within {timeout_s} s")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def workers_rss_mb(self) -> float:
        import psutil

        return sum(p.memory_info().rss for p in psutil.Process(self.proc.pid).children(recursive=True)) / 2**20

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.client.close()
        self.log.close()


def steady(completions: list[float]) -> float:
    done = sorted(completions)
    return (len(done) - 1) / (done[-1] - done[0])


def simulate_throughput(jobs: int, work: Path) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "ppsvd", "simulate", *LAYOUT, *COSTS, *SHAPE, "--num-samples", str(jobs)]
    cmd += ["--log-format", "json", "--output-dir", str(work / "simulate")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"ppsvd simulate failed: {done.stderr[-2000:]}")
    summary = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event": "summary"')][-1]
    metrics = summary["metrics"]
    return metrics["steady_throughput"], str(metrics.get("partition") or "")


def part_throughput(jobs: int, idle_jobs: int, work: Path) -> dict:
    server = Server(work / "state-a", *LAYOUT, *COSTS, *SHAPE)
    image = tiny_png()
    try:
        split = [lane["steps"] for lane in server.client.get(f"{server.url}/v1/service").json()["lanes"]]
        with ThreadPoolExecutor(8) as pool:  # as fast as accepted
            ids = list(pool.map(lambda k: server.post(image, seed=k), range(jobs)))
        videos = server.finished(ids, 900)
        served = steady([v["timings"]["completed"] for v in videos])
        waits_taken, waits_first_step = [], []
        for k in range(idle_jobs):  # idle: one at a time, each after the last finished
            time.sleep(0.3)
            sent = time.time()
            job = server.post(image, seed=10_000 + k)
            (video,) = server.finished([job], 120)
            waits_taken.append(video["timings"]["taken"] - sent)
            waits_first_step.append(video["timings"]["prepared"] - sent)
    finally:
        server.stop()
    return {
        "served_throughput": served,
        "split": "+".join(str(b - a) for a, b in split),
        "post_to_taken_ms": 1000 * statistics.median(waits_taken),
        "post_to_first_step_ms": 1000 * statistics.median(waits_first_step),
        "post_to_first_step_p90_ms": 1000 * sorted(waits_first_step)[int(0.9 * (len(waits_first_step) - 1))],
    }


def part_soak(jobs: int, window: int, work: Path) -> dict:
    args = ("--nproc", "4", "--total-steps", "28", "--transport", "zmq", "--latent-shape", "1", "4", "2", "8", "8")
    server = Server(work / "state-b", *args)
    image = tiny_png()
    rss_after_window: list[float] = []
    try:
        posted: list[str] = []
        lock = threading.Lock()

        def post(k: int) -> None:
            job = server.post(image, seed=k)
            with lock:
                posted.append(job)

        start = time.time()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, k) for k in range(jobs)]
            for k, future in enumerate(futures):
                future.result()
                if k == window - 1:
                    server.finished(list(posted), 600)
                    rss_after_window.append(server.rss_mb())
                    workers_after_window = server.workers_rss_mb()
        videos = server.finished(posted, 1800)
        wall = time.time() - start
        rss_end, workers_end = server.rss_mb(), server.workers_rss_mb()
    finally:
        server.stop()
    done = sorted(v["timings"]["completed"] for v in videos)
    first, last = steady(done[:window]), steady(done[-window:])
    return {
        "soak_jobs": jobs,
        "soak_wall_s": wall,
        "first_window_per_s": first,
        "last_window_per_s": last,
        "drift": last / first - 1,
        "rss_mb_after_window": rss_after_window[0],
        "rss_mb_end": rss_end,
        "rss_growth": rss_end / rss_after_window[0] - 1,
        "workers_rss_mb_after_window": workers_after_window,
        "workers_rss_mb_end": workers_end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--idle-jobs", type=int, default=20)
    parser.add_argument("--soak-jobs", type=int, default=2000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--skip", choices=("throughput", "soak"), action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="ppsvd-serve-bench-") as tmp:
        work = Path(tmp)
        if "throughput" not in args.skip:
            results["simulate_throughput"], _ = simulate_throughput(args.jobs, work)
            results.update(part_throughput(args.jobs, args.idle_jobs, work))
            results["vs_simulate"] = results["served_throughput"] / results["simulate_throughput"]
        if "soak" not in args.skip:
            results.update(part_soak(args.soak_jobs, args.window, work))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    if "served_throughput" in results:
        print(
            f"| steady throughput, {args.jobs} jobs over HTTP (split {results['split']}) | "
            f"{results['served_throughput']:.3f}/s = {results['vs_simulate']:.3f} x simulate's "
            f"{results['simulate_throughput']:.3f}/s | >= 0.95 x |"
        )
        print(
            f"| idle: POST -> first step, median of {args.idle_jobs} (p90) | {results['post_to_first_step_ms']:.1f} ms "
            f"({results['post_to_first_step_p90_ms']:.1f}); POST -> stage 0 has it "
            f"{results['post_to_taken_ms']:.1f} ms "
            "| <= 50 ms |"
        )
    if "drift" in results:
        print(
            f"| {results['soak_jobs']} tiny jobs: last {args.window} vs first {args.window} | "
            f"{results['last_window_per_s']:.1f}/s vs {results['first_window_per_s']:.1f}/s ({results['drift']:+.1%}) "
            "| within 10 % |"
        )
        print(
            f"| server RSS, after {args.window} -> end | {results['rss_mb_after_window']:.1f} -> "
            f"{results['rss_mb_end']:.1f} MiB ({results['rss_growth']:+.1%}); 4 workers "
            f"{results['workers_rss_mb_after_window']:.0f} -> {results['workers_rss_mb_end']:.0f} MiB | <= +10 % |"
        )


if __name__ == "__main__":
    main()
