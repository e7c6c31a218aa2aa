"""The benchmark defaults: what `ppsvd bench` runs when not told otherwise.

They come from the user's original benchmark guide (its benchmark.sh and CSV; docs/benchmarking.ja.md
mirrors it): GPU counts 1, 2, 4, 7, ten samples, seed 42, five seconds between runs, and a CSV
that starts with gpu_count, total_time_sec, per_sample_sec. Its 28 steps and latent
1 4 14 64 64 are every run's defaults (config.DEFAULT_TOTAL_STEPS, config.DEFAULT_LATENT_SHAPE).
"""

from __future__ import annotations

BENCH_GPU_COUNTS = (1, 2, 4, 7)
BENCH_NUM_SAMPLES = 10
BENCH_SEED = 42
BENCH_COOLDOWN_S = 5.0
"""Seconds between runs (the GPUs cool down), not after the last one."""
BENCH_COLUMNS = ["gpu_count", "total_time_sec", "per_sample_sec"]
"""The first columns of benchmark_results.csv, in this order (ppsvd's own columns follow)."""
