"""Options shared by several commands, as Annotated aliases (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ppsvd.config import DEFAULT_MODEL_ID, DEFAULT_TOTAL_STEPS

TotalSteps = Annotated[
    int, typer.Option("--total-steps", help="Denoising steps T, split over the stages (the guide uses 28: divisible by 1, 2, 4, 7).")
]
LatentShape = Annotated[
    tuple[int, int, int, int, int],
    typer.Option("--latent-shape", help="B C F H W: videos per sample, latent channels, frames, latent height, latent width."),
]
NumSamples = Annotated[int, typer.Option("--num-samples", help="Samples to generate; sample i uses seed + i.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed of sample 0.")]
NProc = Annotated[
    Optional[int],
    typer.Option("--nproc", help="Stages (one process, one GPU each). Under torchrun: the world size. Default 1."),
]
Transport = Annotated[
    Optional[str],
    typer.Option("--transport", help="nccl, gloo or zmq. Default: nccl when every stage has a GPU, else gloo."),
]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda. Default: cuda when available.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="fp32, fp16 or bf16. Default: fp16 on CUDA, fp32 on CPU.")]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Each run writes a new directory under this one.")]
ModelId = Annotated[
    str,
    typer.Option("--model-id", "--model", help=f"Hub id or local directory (default {DEFAULT_MODEL_ID}); 'tiny' for the embedded small SVD; 'synthetic' for the CPU stand-in."),
]
Timeout = Annotated[float, typer.Option("--timeout", help="Longest single wait in seconds (receive, send, rendezvous).")]
StepMs = Annotated[float, typer.Option("--step-ms", help="Synthetic model: wall time per step in ms, spent without using the CPU.")]
BindHost = Annotated[str, typer.Option("--bind-host", help="zmq: interface to bind (loopback unless set; multi-node needs a routable address).")]
ZmqEndpoint = Annotated[str, typer.Option("--zmq-endpoint", help="zmq: ipc (one host), tcp (across hosts) or auto.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No live progress bars (summary only).")]

DEFAULT_STEPS = DEFAULT_TOTAL_STEPS
Strategy = Annotated[str, typer.Option("--strategy", help="pipeline (split steps over stages) or data (whole samples per process: the baseline).")]
MaxInFlight = Annotated[int, typer.Option("--max-in-flight", help="Messages a stage may have queued for sending before it waits (back-pressure).")]
