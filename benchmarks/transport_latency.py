"""One-hop latency and bandwidth of each transport between 2 local processes.

    python benchmarks/transport_latency.py                 # gloo, zmq-ipc, zmq-tcp (+ nccl with 2 GPUs)
    python benchmarks/transport_latency.py --repeats 200 --frames 14 25

Each row is one ppsvd.backends.linkcheck.check_link run: latency is the median one-way time of one
latent-sized message (send start to receive done), bandwidth is payload sent back to back.
The payload is an SVD latent [1, frames, 4, 64, 64] (512x512 video) in --dtype.
"""

from __future__ import annotations

import argparse

import torch

from ppsvd.backends.linkcheck import check_link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--frames", type=int, nargs="+", default=[14])
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    links = [("gloo", "auto"), ("zmq", "ipc"), ("zmq", "tcp")]
    if torch.cuda.device_count() >= 2:
        links.append(("nccl", "auto"))
    print("| transport | payload | latency ms (median) | bandwidth Gbit/s | endpoint |")
    print("|---|---|---|---|---|")
    for frames in args.frames:
        shape = (1, frames, 4, 64, 64)
        nbytes = torch.empty(shape, dtype=getattr(torch, args.dtype)).nbytes
        for transport, endpoint in links:
            r = check_link(
                transport,
                zmq_endpoint=endpoint,
                payload_shape=shape,
                dtype=args.dtype,
                repeats=args.repeats,
                timeout_s=args.timeout,
            )
            label = transport if transport != "zmq" else f"zmq-{endpoint}"
            if r.ok:
                print(
                    f"| {label} | {nbytes / 1024:.0f} KiB | {r.latency_ms:.3f} | {r.bandwidth_gbps:.2f} | {r.endpoint} "
                    "|"
                )
            else:
                print(f"| {label} | {nbytes / 1024:.0f} KiB | failed: {r.error} | | |")


if __name__ == "__main__":
    main()
