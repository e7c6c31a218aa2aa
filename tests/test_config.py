import pytest

from ppsvd.bench.options import parse_int_list
from ppsvd.config import RunConfig, check_latent_shape
from ppsvd.errors import ConfigError


def test_defaults_are_the_benchmarks():
    cfg = RunConfig.from_options().validate()
    assert cfg.job.total_steps == 28 and cfg.job.latent_shape == (1, 4, 14, 64, 64)
    assert cfg.job.num_samples == 1 and cfg.job.seed == 0 and cfg.svd.fps == 6 and cfg.svd.motion_bucket_id == 127
    assert cfg.model.resolved_dtype == "fp32" and cfg.resolved_transport == "gloo"
    assert RunConfig.from_options(device="cuda").model.resolved_dtype == "fp16"
    assert RunConfig.from_options(device="cuda").resolved_transport == "nccl"


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"total_steps": 3, "nproc": 4}, "--total-steps 3"),
        ({"num_samples": 0}, "--num-samples 0"),
        ({"nproc": -1}, "--nproc -1"),
        ({"latent_shape": (1, 4, 14, 64)}, "five integers"),
        ({"latent_shape": (1, 4, 0, 64, 64)}, "non-positive"),
        ({"transport": "mpi"}, "--transport 'mpi'"),
        ({"dtype": "fp8"}, "--dtype 'fp8'"),
        ({"device": "tpu"}, "--device 'tpu'"),
        ({"transport": "nccl"}, "needs --device cuda"),
        ({"motion_bucket_id": 300}, "--motion-bucket-id 300"),
        ({"step_ms": -1}, "--step-ms -1"),
        ({"seed": -5}, "--seed -5"),
        ({"min_guidance_scale": 4.0}, "swap"),
    ],
)
def test_bad_input_is_one_line_with_the_value(changes, needle):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_options(**changes).validate()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_device_checks_refuse_two_stages_on_one_gpu():
    with pytest.raises(ConfigError, match="never two stages on one GPU"):
        RunConfig.from_options(device="cuda", nproc=4).check_devices(cuda_device_count=2, local_world_size=4)
    with pytest.raises(ConfigError, match="no CUDA device"):
        RunConfig.from_options(device="cuda").check_devices(cuda_device_count=0, local_world_size=1)


def test_config_round_trips_through_json():
    cfg = RunConfig.from_options(nproc=3, latent_shape=(1, 4, 2, 8, 8), images=("a.png",))
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_int_lists():
    assert parse_int_list("--gpus", "1,2,4,7") == [1, 2, 4, 7]
    with pytest.raises(ConfigError, match="--gpus"):
        parse_int_list("--gpus", "1,x")
    check_latent_shape([1, 4, 14, 64, 64])


def test_flat_options_route_to_their_one_section():
    import dataclasses

    from ppsvd.config import OPTION_SECTIONS, SECTIONS

    owners = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(owners) == len(set(owners)) == len(OPTION_SECTIONS)  # each option in exactly one section
    cfg = RunConfig.from_options(nproc=3, fps=7, transport="zmq", model="tiny", output_dir="out")
    assert (cfg.layout.nproc, cfg.svd.fps, cfg.transport.transport, cfg.model.model) == (3, 7, "zmq", "tiny")
    again = cfg.replace(timeout_s=5.0, seed=9)
    assert again.transport.timeout_s == 5.0 and again.job.seed == 9 and again.transport.transport == "zmq"
    assert cfg.transport.timeout_s == 600.0  # frozen: replace made a copy
    with pytest.raises(TypeError, match="no option 'nprocs'"):
        RunConfig.from_options(nprocs=2)


def test_config_json_is_nested_and_old_flat_files_still_load():
    from pathlib import Path

    from ppsvd.config import SampleInput

    cfg = RunConfig.from_options(
        model="tiny",
        nproc=2,
        inputs=(SampleInput(image="a.png", seed=3),),
        stage_speed=(),
        latent_shape=(1, 4, 2, 8, 8),
        output_dir=Path("runs"),
        extra={"sweep": "x"},
    )
    data = cfg.to_json()
    assert data["layout"]["nproc"] == 2 and data["job"]["latent_shape"] == [1, 4, 2, 8, 8] and "nproc" not in data
    assert RunConfig.from_json({**data, "world_size": 2, "costs": None}) == cfg
    # A config.json written before the sections: one flat record (what --resume of an older run reads).
    flat = {
        **cfg.options(),
        "output_dir": "runs",
        "latent_shape": [1, 4, 2, 8, 8],
        "inputs": [{"image": "a.png", "seed": 3}],
        "resolved_dtype": "fp32",
        "world_size": 2,
    }
    assert RunConfig.from_json(flat) == cfg


# -- several stages per GPU (--stages-per-gpu), on a machine whose GPUs are mocked ----------------


def test_several_stages_on_one_gpu_with_gloo_or_zmq(monkeypatch):
    """One visible GPU, 3 stages on it: accepted over gloo and zmq (and the default then is gloo)."""
    import torch

    from ppsvd.api.execution import check

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("ppsvd.models.base._free_memory", lambda config: ([], []))  # memory: its own test below
    for transport in ("gloo", "zmq", None):
        cfg = RunConfig.from_options(
            model="tiny", latent_shape=(1, 4, 2, 8, 8), device="cuda", nproc=3, stages_per_gpu=3, transport=transport
        )
        check(cfg)
        assert cfg.resolved_transport == (transport or "gloo")
        assert [cfg.layout.gpu_index(rank) for rank in range(3)] == [0, 0, 0]
    two = RunConfig.from_options(device="cuda", nproc=4, stages_per_gpu=2)
    assert [two.layout.gpu_index(rank) for rank in range(4)] == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="need 2 CUDA devices but only 1"):
        two.check_devices(cuda_device_count=1, local_world_size=4)


def test_several_stages_on_one_gpu_refuse_nccl_in_one_line(monkeypatch, capsys):
    import torch

    from tests.helpers import run_cli

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code, _, err = run_cli(
        capsys, "run", "--model-id", "tiny", "--device", "cuda", "--nproc", "3", "--stages-per-gpu", "3",
        "--transport", "nccl", "--no-progress",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "NCCL refuses two ranks on the same device" in err and "gloo or zmq" in err
    # and the default stays one stage per GPU
    code, _, err = run_cli(capsys, "run", "--model-id", "tiny", "--device", "cuda", "--nproc", "3", "--no-progress")
    assert code == 2 and "never two stages on one GPU" in err and "--stages-per-gpu 3" in err
    with pytest.raises(ConfigError, match="--stages-per-gpu 2 places stages on CUDA devices"):
        RunConfig.from_options(nproc=2, stages_per_gpu=2).validate()


def test_memory_preflight_counts_every_stage_on_a_gpu():
    from ppsvd.models import memory

    shape, gib = (1, 4, 14, 64, 64), 1024**3
    stages = memory.estimate_stages("svd", "fp16", shape, 3, "cuda")
    assert memory.per_device_need(stages, 1, stages_per_device=3) == [sum(s.total_bytes for s in stages)]
    assert memory.per_device_need(stages, 2, stages_per_device=2) == [
        stages[0].total_bytes + stages[1].total_bytes,
        stages[2].total_bytes,
    ]
    room_for_one = [memory.estimate_stages("svd", "fp16", shape, 1, "cuda")[0].total_bytes + gib]  # one whole stage
    assert memory.fit_refusal("svd", "fp16", shape, 1, "cuda", room_for_one, ["cuda:0"]) is None
    refusal = memory.fit_refusal("svd", "fp16", shape, 3, "cuda", room_for_one, ["cuda:0"], stages_per_device=3)
    assert refusal is not None and "on cuda:0" in refusal and "\n" not in refusal
