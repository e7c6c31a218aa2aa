"""ppsvd doctor: probing against mocked NVML / torch, the pure checks, the JSON contract, the CLI,
and the live transport check (fake check_link; the real one for gloo and zmq on this CPU)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from ppsvd.config import RunConfig
from ppsvd.doctor import CHECK_KEYS, TOP_LEVEL_KEYS, diagnose, probe, report_for
from ppsvd.doctor import live as live_mod
from ppsvd.doctor.checks import CHECK_NAMES, MIN_VERSIONS, check_versions, context, ifname_matches, p2p_order
from ppsvd.doctor.facts import Facts, GpuInfo, LinkInfo, ModelInfo, PairInfo
from ppsvd.models import hub, memory

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
SVD = "stabilityai/stable-video-diffusion-img2vid-xt"


# -- fakes ------------------------------------------------------------------------------------


class NVMLError(Exception):
    pass


class FakeNVML:
    """The pynvml calls doctor makes, for `count` identical GPUs; `no_p2p` pairs lack peer access."""

    NVML_NVLINK_MAX_LINKS = 18

    def __init__(
        self, count=7, no_p2p=(), nvlink=(), name="NVIDIA RTX A5000", total=24 * GIB, free=23 * GIB, fail_init=False
    ):
        self.count, self.name, self.total, self.free = count, name, total, free
        self.no_p2p = {frozenset(p) for p in no_p2p}
        self.nvlink = {frozenset(p) for p in nvlink}
        self.fail_init = fail_init
        self.shutdown_called = False

    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown_called = True

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        assert 0 <= i < self.count
        return i

    def nvmlDeviceGetName(self, h):
        return self.name.encode()  # old pynvml returns bytes

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:08d}-aaaa-bbbb-cccc-000000000000"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=self.total, free=self.free, used=self.total - self.free)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (8, 6)

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=f"00000000:{h + 0x10:02X}:00.0")

    def nvmlDeviceGetNvLinkState(self, h, link):
        if not any(h in pair for pair in self.nvlink):
            raise NVMLError("Not Supported")
        if link >= 4:
            raise NVMLError("Invalid Argument")
        return 1

    def nvmlDeviceGetP2PStatus(self, a, b, caps):
        assert isinstance(caps, int), "pynvml's READ constant is a tuple: doctor must pass plain ints"
        pair = frozenset((a, b))
        if caps == 2:  # NVLINK
            return 0 if pair in self.nvlink else 5
        return 3 if pair in self.no_p2p else 0  # 3: IOH topology not supported

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return 50 if frozenset((a, b)) in self.no_p2p else 20


def fake_torch(count=7, no_p2p=(), cuda=True):
    no_p2p = {frozenset(p) for p in no_p2p}
    props = SimpleNamespace(name="NVIDIA RTX A5000", total_memory=24 * GIB, major=8, minor=6)
    return SimpleNamespace(
        __version__="2.11.0+cu124" if cuda else "2.11.0+cpu",
        version=SimpleNamespace(cuda="12.4" if cuda else None),
        cuda=SimpleNamespace(
            is_available=lambda: cuda and count > 0,
            device_count=lambda: count if cuda else 0,
            nccl=SimpleNamespace(version=lambda: (2, 21, 5)),
            get_device_properties=lambda i: props,
            mem_get_info=lambda i: (22 * GIB, 24 * GIB),
            can_device_access_peer=lambda a, b: frozenset((a, b)) not in no_p2p,
        ),
    )


def gather(planned, tmp_path, *, nvml, torch_module, env=None):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), **(env or {})}
    return probe.gather(planned, env=env, nvml=nvml, torch_module=torch_module)


def plan_run(**options):
    """The run doctor checks, as the CLI builds it: --device not given unless options say so."""
    return RunConfig.from_options(**{"device": None, **options})


def by_name(report):
    return {c.name: c for c in report.checks}


# -- a fake 7-GPU machine ---------------------------------------------------------------------


def test_seven_gpus_one_pair_without_p2p_names_the_pair_hop_and_consequence(tmp_path):
    planned = plan_run(model="synthetic", nproc=7, total_steps=28, output_dir=tmp_path / "runs")
    nvml = FakeNVML(7, no_p2p=[(2, 3)])
    facts = gather(planned, tmp_path, nvml=nvml, torch_module=fake_torch(7))
    assert nvml.shutdown_called
    assert facts.gpu_source == "nvml" and len(facts.gpus) == 7 and len(facts.pairs) == 21
    assert facts.gpus[0].name == "NVIDIA RTX A5000" and facts.gpus[0].capability == (8, 6)
    assert facts.driver == "550.54.15" and facts.driver_cuda == "12.4" and facts.nccl == "2.21.5"
    assert [(p.a, p.b) for p in facts.pairs if not p.p2p] == [(2, 3)]

    report = report_for(facts, planned)
    checks = by_name(report)
    p2p = checks["p2p"]
    assert p2p.status == "warn"
    assert "GPU 2 <-> GPU 3" in p2p.summary and "topology not supported" in p2p.summary
    assert "stage 2 -> 3 (GPU 2 -> GPU 3)" in p2p.summary
    assert "host memory" in p2p.fix and "SHM" in p2p.fix
    assert p2p.details["missing"] == ["2-3"]
    order = [int(i) for i in p2p.details["suggested_visible_devices"].split(",")]
    assert sorted(order) == list(range(7))
    assert all({a, b} != {2, 3} for a, b in itertools.pairwise(order))
    assert f"CUDA_VISIBLE_DEVICES={p2p.details['suggested_visible_devices']}" in p2p.fix

    assert checks["gpus"].status == "pass" and "7x NVIDIA RTX A5000" in checks["gpus"].summary
    assert checks["placement"].status == "pass" and "4+4+4+4+4+4+4" in checks["placement"].summary
    assert checks["memory"].status == "pass"
    assert report.device == "cuda" and report.transport == "nccl" and report.dtype == "fp16"
    assert report.exit_code == 0  # a missing P2P pair slows a hop; it does not stop the run


def test_a_pair_off_the_planned_hops_is_named_but_affects_none(tmp_path):
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, output_dir=tmp_path)
    facts = gather(planned, tmp_path, nvml=FakeNVML(7, no_p2p=[(4, 6)], nvlink=[(0, 1)]), torch_module=fake_torch(7))
    p2p = by_name(report_for(facts, planned))["p2p"]
    assert "GPU 4 <-> GPU 6" in p2p.summary and "none of the planned hops" in p2p.summary
    assert "NVLink between 1" in p2p.summary
    assert p2p.details["planned_hops"] == [
        {"from_stage": 0, "to_stage": 1, "gpus": [0, 1], "p2p": True, "nvlink": True}
    ]
    assert facts.gpus[0].nvlinks_active == 4 and facts.gpus[2].nvlinks_active == 0


def test_more_stages_than_gpus_is_two_ranks_on_one_gpu(tmp_path):
    planned = plan_run(model="synthetic", nproc=8, total_steps=32, output_dir=tmp_path)
    facts = gather(planned, tmp_path, nvml=FakeNVML(7), torch_module=fake_torch(7))
    report = report_for(facts, planned)
    placement = by_name(report)["placement"]
    assert placement.status == "fail"
    assert "two ranks on one GPU" in placement.summary and "stage 7 and stage 0 on GPU 0" in placement.summary
    assert "--nproc 7" in placement.fix
    assert report.exit_code == 1


def test_torch_fallback_without_nvml(tmp_path):
    planned = plan_run(model="synthetic", nproc=7, total_steps=28, output_dir=tmp_path)
    facts = gather(planned, tmp_path, nvml=FakeNVML(fail_init=True), torch_module=fake_torch(7, no_p2p=[(5, 6)]))
    assert facts.gpu_source == "torch" and len(facts.gpus) == 7
    assert facts.gpus[3].free_bytes == 22 * GIB
    pair = next(p for p in facts.pairs if (p.a, p.b) == (5, 6))
    assert pair.p2p is False and pair.nvlink is None
    p2p = by_name(report_for(facts, planned))["p2p"]
    assert "GPU 5 <-> GPU 6" in p2p.summary and "stage 5 -> 6" in p2p.summary


def test_cuda_visible_devices_selects_and_orders_gpus(tmp_path):
    uuids = [f"GPU-{i}abc" for i in range(7)]
    assert probe.visible_indices(None, 7, uuids) == list(range(7))
    assert probe.visible_indices("3,1", 7, uuids) == [3, 1]
    assert probe.visible_indices("0,9,1", 7, uuids) == [0]  # CUDA stops at the first invalid entry
    assert probe.visible_indices("", 7, uuids) == []
    assert probe.visible_indices("-1", 7, uuids) == []
    assert probe.visible_indices("GPU-5", 7, uuids) == [5]
    planned = plan_run(model="synthetic", nproc=2, output_dir=tmp_path, total_steps=28)
    facts = gather(
        planned,
        tmp_path,
        nvml=FakeNVML(7, no_p2p=[(3, 5)]),
        torch_module=fake_torch(2),
        env={"CUDA_VISIBLE_DEVICES": "3,5"},
    )
    assert [(g.index, g.nvml_index) for g in facts.gpus] == [(0, 3), (1, 5)]
    assert facts.pairs[0].p2p is False  # physical 3-5 is cuda 0-1
    p2p = by_name(report_for(facts, planned))["p2p"]
    assert "stage 0 -> 1 (GPU 0 -> GPU 1)" in p2p.summary


def test_bf16_on_pre_ampere_gpus_fails(tmp_path):
    planned = plan_run(model="synthetic", nproc=2, dtype="bf16", output_dir=tmp_path, total_steps=28)
    facts = gather(planned, tmp_path, nvml=FakeNVML(2), torch_module=fake_torch(2))
    facts.gpus = [GpuInfo(**{**g.__dict__, "capability": (7, 5)}) for g in facts.gpus]
    gpus = by_name(report_for(facts, planned))["gpus"]
    assert gpus.status == "fail" and "--dtype fp16" in gpus.fix


# -- a machine without a GPU ------------------------------------------------------------------


def test_no_gpu_still_runs_and_recommends_simulate(tmp_path):
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, output_dir=tmp_path)
    facts = gather(planned, tmp_path, nvml=FakeNVML(fail_init=True), torch_module=fake_torch(0, cuda=False))
    assert facts.gpus == [] and "NVML" in facts.nvml_error
    report = report_for(facts, planned)
    checks = by_name(report)
    assert report.device == "cpu" and report.transport == "gloo" and report.dtype == "fp32"
    assert checks["gpus"].status == "warn"
    assert "no NVIDIA GPU" in checks["gpus"].summary
    assert "ppsvd simulate" in checks["gpus"].fix and "--device cpu" in checks["gpus"].fix
    assert checks["p2p"].status == "skip"
    assert checks["memory"].status == "pass" and checks["memory"].details["devices"][0]["device"] == "cpu"
    assert report.exit_code == 0

    cuda = plan_run(model="synthetic", nproc=2, total_steps=28, device="cuda", output_dir=tmp_path)
    report = report_for(facts, cuda)
    assert by_name(report)["gpus"].status == "fail" and report.exit_code == 1


def test_gpus_present_but_torch_is_a_cpu_build_fails(tmp_path):
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, output_dir=tmp_path)
    facts = gather(planned, tmp_path, nvml=FakeNVML(2), torch_module=fake_torch(2, cuda=False))
    report = report_for(facts, planned)
    checks = by_name(report)
    assert "fall back to the CPU" in checks["gpus"].summary and checks["gpus"].status == "fail"
    assert (
        next(r for r in checks["versions"].details["components"] if r["component"] == "cuda runtime")["status"]
        == "fail"
    )
    assert report.exit_code == 1


# -- environment ------------------------------------------------------------------------------


def _facts(**kw):
    base = dict(
        python="3.11.7",
        packages={
            "torch": "2.11.0",
            "diffusers": "0.33.1",
            "transformers": "4.56.2",
            "pyzmq": "26.2",
            "nvidia-ml-py": "12.560",
        },
        net_interfaces=("lo", "eth0"),
        cpu_count=16,
        host_total_bytes=64 * GIB,
        host_available_bytes=60 * GIB,
        model=ModelInfo(model="synthetic", kind="embedded", present=True),
    )
    base.update(kw)
    return Facts(**base)


def _seven_gpus(**kw):
    gpus = [
        GpuInfo(index=i, name="NVIDIA RTX A5000", total_bytes=24 * GIB, free_bytes=23 * GIB, capability=(8, 6))
        for i in range(7)
    ]
    pairs = [PairInfo(a=a, b=b, p2p=True) for a in range(7) for b in range(a + 1, 7)]
    return _facts(
        gpus=gpus,
        pairs=pairs,
        cuda_usable=True,
        torch_cuda="12.4",
        nccl="2.21.5",
        gpu_source="nvml",
        physical_gpus=7,
        **kw,
    )


def test_version_floors_are_pyprojects():
    """doctor's minimum versions are pyproject's (read back from the installed package), so doctor
    never passes a machine the package itself refuses; a version below a floor fails naming it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"python": project["requires-python"].removeprefix(">=")}
    for requirement in project["dependencies"]:
        name, _, floor = requirement.partition(">=")
        declared[name.strip()] = floor.strip()
    for name in ("python", "torch", "diffusers", "transformers", "pyzmq"):
        assert ".".join(map(str, MIN_VERSIONS[name])) == declared[name], name
    planned = RunConfig.from_options(model="tiny", device="cpu", transport="zmq")
    for name in ("torch", "diffusers", "transformers", "pyzmq"):
        packages = {**_facts().packages, name: "0.0.1"}
        rows = check_versions(context(_facts(packages=packages), planned)).details["components"]
        row = next(r for r in rows if r["component"] == name)
        assert row["status"] == "fail" and f">= {declared[name]} required" in row["note"], row
    rows = check_versions(context(_facts(), planned)).details["components"]
    assert all(r["status"] == "pass" for r in rows if r["component"] in declared), rows


def test_environment_variables_are_explained_and_judged():
    planned = plan_run(model="synthetic", nproc=7, total_steps=28)
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "ib", "GLOO_SOCKET_IFNAME": "lo"}
    report = report_for(_seven_gpus(env=env), planned)
    checks = by_name(report)
    variables = checks["environment"].details["variables"]
    assert set(variables) == set(probe.ENV_VARS)
    assert variables["NCCL_P2P_DISABLE"]["status"] == "warn"
    assert variables["NCCL_DEBUG"]["status"] == "pass" and "INFO" in variables["NCCL_DEBUG"]["effect"]
    assert variables["NCCL_SOCKET_IFNAME"]["status"] == "fail"  # nccl planned: init would fail
    assert variables["GLOO_SOCKET_IFNAME"]["status"] == "pass"
    assert checks["environment"].status == "fail" and report.exit_code == 1
    assert checks["p2p"].status == "warn" and "NCCL_P2P_DISABLE=1" in checks["p2p"].summary
    assert variables["HF_HUB_OFFLINE"]["value"] is None


def test_nccl_socket_ifname_matching():
    ifaces = ("lo", "eth0", "eth1", "docker0")
    assert ifname_matches("eth", ifaces) == ["eth0", "eth1"]
    assert ifname_matches("=eth", ifaces) == []
    assert ifname_matches("^docker,lo", ifaces) == ["eth0", "eth1"]
    assert ifname_matches("=lo", ifaces) == ["lo"]


# -- model cache ------------------------------------------------------------------------------


def _fake_cache(root: Path, model: str, skip=()):
    repo = root / ("models--" + model.replace("/", "--"))
    snap = repo / "snapshots" / "abc123"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    files = {
        "unet/config.json": 10,
        "unet/diffusion_pytorch_model.fp16.safetensors": 3000,
        "vae/config.json": 10,
        "vae/diffusion_pytorch_model.safetensors": 200,
        "image_encoder/config.json": 10,
        "image_encoder/model.fp16.safetensors": 1200,
        "feature_extractor/preprocessor_config.json": 10,
        "scheduler/scheduler_config.json": 10,
        "model_index.json": 10,
    }
    (repo / "blobs").mkdir()
    for i, (rel, size) in enumerate(files.items()):
        if rel.split("/")[0] in skip and not rel.endswith(".json"):
            continue
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(b"x" * size)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(blob)
    return repo


def test_model_in_cache_partly_cached_and_offline(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    info = probe.probe_model(SVD, env)
    assert info.kind == "hub" and not info.present and info.path is None

    _fake_cache(tmp_path / "hub", SVD)
    info = probe.probe_model(SVD, env)
    assert info.present and info.files == 9 and info.size_bytes == 3000 + 200 + 1200 + 60

    planned = plan_run(model=SVD, nproc=7, total_steps=28)
    model = by_name(report_for(_seven_gpus(model=info), planned))["model"]
    assert model.status == "pass" and "9 files" in model.summary

    other = "someone/svd-finetune"
    _fake_cache(tmp_path / "hub", other, skip=("vae",))
    info = probe.probe_model(other, env)
    assert not info.present and info.missing == ("vae",)
    planned = plan_run(model=other, nproc=7, total_steps=28)
    model = by_name(report_for(_seven_gpus(model=info), planned))["model"]
    assert model.status == "warn" and "partly cached" in model.summary and "missing vae" in model.summary
    assert f'download {other} --exclude "svd*"' in model.fix

    report = report_for(_seven_gpus(model=info, env={"HF_HUB_OFFLINE": "1"}), planned)
    model = by_name(report)["model"]
    assert model.status == "fail" and "HF_HUB_OFFLINE=1" in model.summary and report.exit_code == 1


def test_embedded_models_and_hf_home():
    assert probe.probe_model("tiny", {}).present
    assert probe.probe_model("synthetic", {}).kind == "embedded"
    assert hub.hub_cache_dir({"HF_HOME": "/x"}) == "/x/hub"
    assert hub.hub_cache_dir({"HF_HOME": "/x", "HF_HUB_CACHE": "/y"}) == "/y"
    assert hub.hub_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/huggingface/hub"


def _svd_files(root: Path, skip=()):
    """A diffusers-format SVD folder (fp16-only UNet weights, as some people fetch it), minus `skip` files."""
    files = {
        **{rel: "{}" for rel in hub.CONFIG_FILES.values()},
        "model_index.json": "{}",
        "unet/diffusion_pytorch_model.fp16.safetensors": "w",
        "vae/diffusion_pytorch_model.safetensors": "w",
        "image_encoder/model.safetensors": "w",
    }
    for rel, text in files.items():
        if rel not in skip:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)


def test_doctor_and_the_svd_loader_agree_on_where_a_model_is_and_what_it_lacks(tmp_path, monkeypatch):
    # One answer (models.hub) for local or hub, the cache folder and the file list: for each layout,
    # doctor reports missing exactly what makes the loader's preflight refuse the model.
    svd = pytest.importorskip("ppsvd.models.svd")
    from ppsvd.errors import ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the loader must not try to download the hub cases
    _svd_files(tmp_path / "complete")
    _svd_files(tmp_path / "no-vae-weights", skip=("vae/diffusion_pytorch_model.safetensors",))
    for repo, skip in (("org/svd", ()), ("org/svd-partial", ("scheduler/scheduler_config.json",))):
        snap = tmp_path / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc"
        _svd_files(snap, skip)
        (snap.parents[1] / "refs").mkdir()
        (snap.parents[1] / "refs" / "main").write_text("abc")
    cases = {
        "./complete": ("local", ()),
        "./no-vae-weights": ("local", ("vae",)),
        "./missing": ("local", hub.COMPONENTS),
        "org/svd": ("hub", ()),
        "org/svd-partial": ("hub", ("scheduler",)),
        "org/never-fetched": ("hub", hub.COMPONENTS),
    }
    import os

    for model, (kind, missing) in cases.items():
        info = probe.probe_model(model, dict(os.environ))
        assert (info.kind, info.missing, info.present) == (kind, missing, not missing), model
        if not missing:
            svd.model_configs(RunConfig.from_options(model=model))
            continue
        with pytest.raises(ModelNotFoundError) as refused:
            svd.model_configs(RunConfig.from_options(model=model))
        if model == "./missing":
            assert "no such directory" in str(refused.value)
        elif len(missing) < len(hub.COMPONENTS):
            assert all(f"{name}/" in str(refused.value) for name in missing), str(refused.value)


# -- memory -----------------------------------------------------------------------------------


def test_memory_estimate_follows_the_documented_formula():
    stages = memory.estimate_stages(SVD, "fp16", (1, 4, 14, 64, 64), 7, "cuda")
    p = memory.SVD_PARAMS
    assert stages[0].weights_bytes == 2 * (p["unet"] + p["image_encoder"] + p["vae"])
    assert stages[3].weights_bytes == 2 * p["unet"]
    assert stages[6].weights_bytes == 2 * (p["unet"] + p["vae"])
    assert stages[6].activation_kind == "decode" and stages[3].activation_kind == "unet"
    latent = 1 * 4 * 14 * 64 * 64 * 2
    assert stages[3].activation_bytes == memory.UNET_ACT * 2 * 14 * 64 * 64 * 2 + 6 * latent
    assert stages[6].activation_bytes == memory.DECODE_ACT * 14 * 64 * 64 * 2 + 6 * latent
    # Doubling the frames doubles the activations; CFG is in the UNet term.
    double = memory.estimate_stages(SVD, "fp16", (1, 4, 28, 64, 64), 7, "cuda")
    assert double[3].activation_bytes == 2 * stages[3].activation_bytes
    one = memory.estimate_stages(SVD, "fp16", (1, 4, 14, 64, 64), 1, "cuda")[0]
    assert 8 * GIB < one.total_bytes < 14 * GIB  # weights ~4.2 GiB + decode of 14 frames ~7 GiB + overhead


def test_out_of_memory_suggests_the_largest_shape_that_fits():
    gpus = [
        GpuInfo(index=i, name="small", total_bytes=10 * GIB, free_bytes=10 * GIB, capability=(8, 6)) for i in range(2)
    ]
    facts = _facts(
        gpus=gpus,
        pairs=[PairInfo(a=0, b=1, p2p=True)],
        cuda_usable=True,
        torch_cuda="12.4",
        nccl="2.21.5",
        gpu_source="nvml",
        physical_gpus=2,
    )
    planned = plan_run(model=SVD, nproc=2, total_steps=28)
    mem = by_name(report_for(facts, planned))["memory"]
    assert mem.status == "fail" and "will not fit" in mem.summary
    best = tuple(mem.details["largest_fitting_shape"])
    assert best[:3] == (1, 4, 14) and best[3] < 64 and best[3] % 8 == 0
    assert f"--latent-shape {' '.join(map(str, best))}" in mem.fix
    usable = [int(10 * GIB * 0.9)] * 2
    assert memory.fits(SVD, "fp16", best, 2, "cuda", usable)
    assert not memory.fits(SVD, "fp16", (1, 4, 14, best[3] + 8, best[4] + 8), 2, "cuda", usable)
    assert "--decode-chunk-size" in mem.fix


def test_largest_fitting_shape_reduces_batch_then_size_then_frames():
    big = [24 * GIB]
    assert memory.largest_fitting_shape(SVD, "fp16", (4, 4, 14, 64, 64), 1, "cuda", big) == (2, 4, 14, 64, 64)
    assert memory.largest_fitting_shape(SVD, "fp16", (1, 4, 14, 64, 64), 1, "cuda", [GIB]) is None
    shape = memory.largest_fitting_shape(SVD, "fp16", (1, 4, 25, 72, 128), 1, "cuda", [10 * GIB])
    assert shape is not None and shape[2] == 25 and shape[3] < 72 and shape[4] < 128


# -- JSON contract ----------------------------------------------------------------------------


def _sample_reports(tmp_path):
    planned = plan_run(model=SVD, nproc=7, total_steps=28, output_dir=tmp_path)
    seven = gather(planned, tmp_path, nvml=FakeNVML(7, no_p2p=[(2, 3)]), torch_module=fake_torch(7))
    seven.live = [
        LinkInfo(
            transport="gloo",
            endpoint="gloo over loopback",
            label="gloo",
            ok=True,
            latency_ms=0.15,
            bandwidth_gbps=20.0,
            elapsed_s=1.2,
            timeout_s=10.0,
        ),
        LinkInfo(
            transport="nccl",
            endpoint=None,
            label="nccl",
            ok=False,
            error="timed out after 10s",
            elapsed_s=10.0,
            timeout_s=10.0,
        ),
    ]
    none = gather(planned, tmp_path, nvml=FakeNVML(fail_init=True), torch_module=fake_torch(0, cuda=False))
    return [report_for(seven, planned), report_for(none, planned)]


def test_json_keys_are_pinned_and_documented(tmp_path):
    docs = (ROOT / "docs" / "doctor.md").read_text()
    documented = set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", docs))
    for report in _sample_reports(tmp_path):
        data = json.loads(json.dumps(report.to_json()))
        assert tuple(data) == TOP_LEVEL_KEYS
        assert [c["name"] for c in data["checks"]] == list(CHECK_NAMES)
        assert set(data["counts"]) == {"pass", "warn", "fail", "skip"}
        assert data["exit_code"] == (1 if any(c["status"] == "fail" for c in data["checks"]) else 0)
        for check in data["checks"]:
            assert tuple(check) == CHECK_KEYS
            assert check["status"] in ("pass", "warn", "fail", "skip")
            assert (check["fix"] is not None) == (check["status"] in ("warn", "fail")), check
        keys = set(TOP_LEVEL_KEYS) | set(CHECK_KEYS) | set(CHECK_NAMES) | set(data["planned"]) | set(data["machine"])
        for check in data["checks"]:
            keys |= set(check["details"])
            for value in check["details"].values():
                rows = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
                for row in rows:
                    if isinstance(row, dict) and check["name"] != "environment":
                        keys |= set(row)
        missing = sorted(k for k in keys if k not in documented)
        assert not missing, f"docs/doctor.md does not document: {missing}"


def test_transport_check_judges_the_planned_link(tmp_path):
    reports = _sample_reports(tmp_path)
    transport = by_name(reports[0])["transport"]
    assert transport.status == "fail"  # nccl is what a 7-GPU run uses, and it failed
    assert "nccl FAILED" in transport.summary and "NCCL_DEBUG=INFO" in transport.fix
    gloo = transport.details["links"][0]
    assert gloo["share_of_step"] == pytest.approx(0.15e-3 / memory.REF_STEP_S)


# -- live check with a fake check_link --------------------------------------------------------


def _fake_link(transport, *, zmq_endpoint, payload_shape, dtype, repeats, timeout_s, _hang):
    if _hang:
        threading.Event().wait()  # never returns: doctor must stop waiting on its own
    return SimpleNamespace(
        transport=transport,
        endpoint=f"{transport}:{zmq_endpoint}",
        ok=True,
        latency_ms=0.2,
        bandwidth_gbps=10.0,
        error=None,
        elapsed_s=0.01,
    )


def test_live_check_abandons_a_transport_that_never_returns(monkeypatch):
    monkeypatch.setattr(live_mod, "GRACE_S", 0.1)
    facts = _facts()
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, latent_shape=(1, 4, 2, 8, 8))
    start = time.monotonic()
    live_mod.run_live(facts, planned, "fp32", timeout_s=0.3, check_link=_fake_link, hang=("zmq-tcp",))
    assert time.monotonic() - start < 2.0
    by_label = {link.label: link for link in facts.live}
    assert set(by_label) == {"gloo", "zmq-ipc", "zmq-tcp"}
    assert by_label["gloo"].ok and by_label["zmq-ipc"].ok
    assert not by_label["zmq-tcp"].ok and "no answer within" in by_label["zmq-tcp"].error
    assert facts.live_skipped == [("nccl", "needs 2 GPUs, 0 visible")]
    transport = by_name(report_for(facts, planned))["transport"]
    assert transport.status == "warn"  # gloo is planned and works; zmq-tcp is not needed


def test_live_check_reports_exceptions_and_missing_linkcheck(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("connection refused\nmore lines")

    facts = _facts()
    planned = plan_run(model="synthetic", nproc=2, total_steps=28)
    live_mod.run_live(facts, planned, "fp32", timeout_s=1, check_link=boom)
    assert all(not link.ok and link.error == "RuntimeError: connection refused" for link in facts.live)
    assert by_name(report_for(facts, planned))["transport"].status == "fail"  # gloo is the planned link

    monkeypatch.setitem(sys.modules, "ppsvd.backends.linkcheck", None)
    facts = _facts()
    live_mod.run_live(facts, planned, "fp32", timeout_s=1)
    assert facts.live is None and "not importable" in facts.live_error
    assert by_name(report_for(facts, planned))["transport"].status == "warn"


# -- the real thing on this CPU ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_real_live_check_gloo_and_zmq_on_this_cpu(tmp_path):
    linkcheck = pytest.importorskip("ppsvd.backends.linkcheck")
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, device="cpu", output_dir=tmp_path)
    start = time.monotonic()
    report = diagnose(planned, live=True, live_timeout=10.0, env={"HF_HUB_CACHE": str(tmp_path)})
    took = time.monotonic() - start
    links = {link.label: link for link in report.facts.live}
    assert set(links) == {"gloo", "zmq-ipc", "zmq-tcp"}
    for link in links.values():
        assert link.ok, f"{link.label}: {link.error}"
        assert 0 < link.latency_ms < 1000 and link.bandwidth_gbps > 0
    assert by_name(report)["transport"].status == "pass"
    assert took < 15.0

    # A transport forced to hang is reported failed within its timeout.
    start = time.monotonic()
    hung = live_mod._one(linkcheck.check_link, "gloo", "gloo", "auto", (1, 2, 4, 8, 8), "float32", 2.0, True)
    assert not hung.ok and "timed out after 2s" in hung.error
    assert time.monotonic() - start < 2.0 + 2.0


# -- CLI --------------------------------------------------------------------------------------


def test_cli_json_no_live(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ppsvd.cli import app

    # A CPU-only machine whatever this one has (with a GPU the planned run is a CUDA one).
    real_gather = probe.gather
    monkeypatch.setattr(
        probe,
        "gather",
        lambda planned, **kw: real_gather(
            planned, **{**kw, "nvml": FakeNVML(fail_init=True), "torch_module": fake_torch(0, cuda=False)}
        ),
    )
    result = CliRunner().invoke(
        app,
        [
            "doctor",
            "--json",
            "--no-live",
            "--model-id",
            "synthetic",
            "--nproc",
            "2",
            "--total-steps",
            "28",
            "--output-dir",
            str(tmp_path),
        ],
    )
    data = json.loads(result.stdout)
    assert tuple(data) == TOP_LEVEL_KEYS
    assert result.exit_code == data["exit_code"]
    assert data["planned"]["model"] == "synthetic" and data["planned"]["nproc"] == 2
    transport = next(c for c in data["checks"] if c["name"] == "transport")
    assert transport["status"] == "skip"


def test_cli_table_and_bad_input(tmp_path, capsys):
    from typer.testing import CliRunner

    from ppsvd.cli import app, main

    result = CliRunner().invoke(app, ["doctor", "--no-live", "--model-id", "synthetic", "--output-dir", str(tmp_path)])
    assert "versions" in result.stdout and "transport" in result.stdout and "passed" in result.stdout
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--no-live", "--latent-shape", "1", "4", "14", "0", "64"])
    assert exc.value.code == 2
    assert "--latent-shape" in capsys.readouterr().err


def test_importing_the_command_does_not_import_torch():
    code = (
        "import sys, ppsvd.commands.doctor, ppsvd.doctor, ppsvd.doctor.checks, ppsvd.doctor.probe, "
        "ppsvd.doctor.live, ppsvd.doctor.render; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_p2p_order_finds_a_path_or_none():
    gpus = [GpuInfo(index=i, name="g") for i in range(3)]
    pairs = [PairInfo(a=0, b=1, p2p=False), PairInfo(a=0, b=2, p2p=True), PairInfo(a=1, b=2, p2p=True)]
    assert [g.index for g in p2p_order(gpus, pairs, 3)] == [0, 2, 1]
    assert (
        p2p_order(gpus, [PairInfo(a=0, b=1, p2p=False), PairInfo(a=0, b=2, p2p=False), PairInfo(a=1, b=2, p2p=True)], 3)
        is None
    )


def test_nvml_and_torch_disagreeing_falls_back_to_torch(tmp_path):
    planned = plan_run(model="synthetic", nproc=2, total_steps=28, output_dir=tmp_path)
    facts = gather(
        planned,
        tmp_path,
        nvml=FakeNVML(7),
        torch_module=fake_torch(2),
        env={"CUDA_VISIBLE_DEVICES": "MIG-1234,MIG-5678"},
    )
    assert facts.gpu_source == "torch" and len(facts.gpus) == 2 and len(facts.pairs) == 1
    assert facts.driver == "550.54.15"
    assert any("torch sees 2" in e for e in facts.probe_errors)


def test_mixed_gpu_models_warn_about_cuda_device_order():
    facts = _seven_gpus()
    facts.gpus[6] = GpuInfo(
        index=6, name="NVIDIA RTX A4000", total_bytes=16 * GIB, free_bytes=15 * GIB, capability=(8, 6)
    )
    report = report_for(facts, plan_run(model="synthetic", nproc=7, total_steps=28))
    env = by_name(report)["environment"]
    assert env.details["variables"]["CUDA_DEVICE_ORDER"]["status"] == "warn" and "PCI_BUS_ID" in env.fix
    assert "slowest sets the pipeline's pace" in by_name(report)["gpus"].fix
    facts.env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (
        by_name(report_for(facts, plan_run(model="synthetic", nproc=7, total_steps=28)))["environment"].status == "pass"
    )


def test_a_first_check_that_timed_out_is_run_once_more():
    calls = []

    def slow_start(transport, **kwargs):
        calls.append(transport)
        ok = len(calls) > 1
        return SimpleNamespace(
            transport=transport,
            endpoint="",
            ok=ok,
            latency_ms=0.3 if ok else None,
            bandwidth_gbps=1.0 if ok else None,
            error=None if ok else "timed out after 1s",
            elapsed_s=0.01,
        )

    facts = _facts()
    live_mod.run_live(facts, plan_run(model="synthetic", nproc=2), "fp32", timeout_s=1, check_link=slow_start)
    assert calls == ["gloo", "zmq", "zmq", "gloo"]
    assert facts.live[0].ok and facts.live[0].attempts == 2 and facts.live[1].attempts == 1
