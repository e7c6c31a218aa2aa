"""Issue 17, one test (or a few) per numbered case, driven as a user drives ppsvd: CLI subprocesses,
real corrupted, truncated and replaced files, a real HTTP server on 127.0.0.1, a real unrelated
process. Each asserts the outcome: exit 2 or 1 with one line, or complete bitwise outputs, and
that no file outside the run directory was touched."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

SIM = ["simulate", "--total-steps", "4", "--latent-shape", "1", "4", "1", "8", "8", "--seed", "3", "--no-progress"]
TINY = ["run", "--model-id", "tiny", "--device", "cpu", "--total-steps", "2", "--no-progress"]


def ppsvd(*argv, cwd=None, env=None, timeout=120, umask=-1) -> subprocess.CompletedProcess:
    """`python -m ppsvd ARGV` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ppsvd", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=timeout,
        umask=umask,
    )


def start(*argv, tmp_path: Path, env=None) -> subprocess.Popen:
    """A run in its own process group (as a terminal starts it), its sockets in tmp_path/tmp."""
    sockets = tmp_path / "tmp"
    sockets.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "ppsvd", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(sockets), **(env or {})},
        start_new_session=True,
    )


def one_line(code: int, output: str, rc: int, needle: str) -> str:
    """The run exited with rc and said exactly one error line, containing needle, no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("ppsvd: error:")]
    assert code == rc, output[-3000:]
    assert len(errors) == 1 and needle in errors[0], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return errors[0]


def snapshot(root: Path, *, skip: Path | None = None) -> dict[str, tuple[int, str]]:
    """Every file under root (but skip): its mode and content digest."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if skip is not None and (path == skip or skip in path.parents) or not path.is_file() or path.is_symlink():
            continue
        found[str(path)] = (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def png(path: Path, color=(200, 30, 30), size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def wait_for_samples(out: Path, count: int, proc: subprocess.Popen, limit_s: float = 90) -> Path:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for journal in out.glob("*/manifest.jsonl"):
            if len(journal.read_text().splitlines()) >= count:
                return journal.parent
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {count} finished samples within {limit_s} s: {proc.communicate()[0][-3000:]}")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s: {output[-3000:]}")
    return proc.returncode, output


def run_store(proc: subprocess.Popen):
    """(client of the launcher's loopback store, the run id) of a running self-launched run: what
    any local process can find (a listening port, then list_keys)."""
    import psutil
    from torch.distributed import TCPStore

    from ppsvd.runtime.control import key

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ports = [
            c.laddr.port
            for c in psutil.Process(proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"
        ]
        for port in ports:
            try:
                store = TCPStore(
                    "127.0.0.1", port, is_master=False, timeout=__import__("datetime").timedelta(seconds=5)
                )
                keys = store.list_keys()
            except Exception:
                continue
            ids = {k.split("/")[1] for k in keys if k.startswith("ppsvd/") and k.count("/") >= 2}
            for run_id in ids:
                if store.check([key(run_id, "ready", 1)]):
                    return store, run_id
        time.sleep(0.2)
    pytest.fail("found no store of the run")


# -- 1. --resume takes only a run directory --------------------------------------------------------


def test_1_resume_refuses_a_directory_that_is_no_run_and_leaves_it_untouched(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"_class_name":"UNetSpatioTemporalConditionModel","in_channels":8}')
    before = snapshot(tmp_path)
    done = ppsvd("run", "--resume", model, "--device", "cpu", cwd=tmp_path)
    one_line(done.returncode, done.stderr, 2, f"--resume {model} is not a ppsvd run directory")
    assert snapshot(tmp_path) == before and sorted(p.name for p in model.iterdir()) == ["config.json"]


# -- 2, 3 (videos), 8, 11k: a tiny-SVD run from a job file with relative paths and awkward names ----


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny-SVD run from a job file in folder A naming imgs/cat.png (relative), a
    240-character image name, another sharing its first 200 characters, and '-dash.png'."""
    root = tmp_path_factory.mktemp("tiny")
    a = root / "A"
    long_a, long_b = "x" * 200 + "a" * 40, "x" * 200 + "b" * 40
    png(a / "imgs" / "cat.png", (200, 30, 30))
    png(a / "imgs" / f"{long_a}.png", (30, 200, 30))
    png(a / "imgs" / f"{long_b}.png", (30, 30, 200))
    png(a / "imgs" / "-dash.png", (90, 90, 90))
    names = ["imgs/cat.png", f"imgs/{long_a}.png", f"imgs/{long_b}.png", "imgs/-dash.png"]
    (a / "job.jsonl").write_text("".join(json.dumps({"image": n}) + "\n" for n in names))
    done = ppsvd(*TINY, "--inputs", "job.jsonl", "--nproc", "1", "--output-dir", root / "runs", cwd=a, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, next((root / "runs").iterdir())


def _cut(run: Path, dest: Path, lose: list[int]) -> Path:
    """A copy of a finished run as a stop before samples `lose` were written leaves it."""
    shutil.copytree(run, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for entry in manifest["samples"]:
        if entry["index"] in lose:
            for name in entry["files"]:
                (dest / name).unlink()
    (dest / "manifest.json").unlink()
    kept = [e for e in manifest["samples"] if e["index"] not in lose]
    (dest / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    return dest


def _outputs(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for d in ("latents", "videos") for p in sorted((run / d).iterdir())}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_2_resume_from_another_directory_reads_the_recorded_images_and_refuses_a_changed_one(tiny_run, tmp_path):
    root, full = tiny_run
    cut = _cut(full, tmp_path / "cut", lose=[0])
    b = tmp_path / "B"
    png(b / "imgs" / "cat.png", (0, 0, 255))  # another imgs/cat.png where the resume runs
    outside = snapshot(root, skip=root / "runs") | snapshot(b)
    done = ppsvd("run", "--resume", cut, "--no-progress", cwd=b, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outputs(cut) == _outputs(full)  # bitwise: the recorded /abs/A/imgs/cat.png, not B's
    assert snapshot(root, skip=root / "runs") | snapshot(b) == outside

    # The image itself changed since the run recorded it: refused by name, nothing touched.
    cut2 = _cut(full, tmp_path / "cut2", lose=[0])
    cat = root / "A" / "imgs" / "cat.png"
    original = cat.read_bytes()
    try:
        png(cat, (10, 200, 10))
        before = snapshot(cut2)
        done = ppsvd("run", "--resume", cut2, "--no-progress", cwd=b)
        one_line(done.returncode, done.stderr, 2, f"({cat}): the image changed since this run recorded it")
        assert snapshot(cut2) == before
    finally:
        cat.write_bytes(original)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_3_resume_regenerates_truncated_and_garbage_videos_bitwise(tiny_run, tmp_path):
    _, full = tiny_run
    run = tmp_path / "run"
    shutil.copytree(full, run)
    manifest = json.loads((run / "manifest.json").read_text())
    first, second = (run / manifest["samples"][0]["videos"][0]), (run / manifest["samples"][1]["videos"][0])
    first.write_bytes(first.read_bytes()[:100])  # truncated to 100 bytes
    second.write_bytes(second.read_bytes()[:12] + os.urandom(500))  # an ftyp header, then garbage
    done = ppsvd("run", "--resume", run, "--no-progress", timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 4 samples kept, 2 to generate" in done.stderr, done.stderr
    assert _outputs(run) == _outputs(full)


@pytest.mark.slow
def test_8_long_names_fit_stay_apart_and_never_start_with_a_dash(tiny_run):
    from ppsvd.io.filenames import NAME_MAX

    _, full = tiny_run
    manifest = json.loads((full / "manifest.json").read_text())
    names = [e["name"] for e in manifest["samples"]]
    assert names[0] == "cat-s0" and names[3] == "dash-s3", names
    assert len(set(names)) == 4 and not any(n.startswith(("-", ".")) for n in names)
    for name in names:  # the longest name the writer makes while it writes, temp affixes included
        assert len(f".tmp-{name}_b9-12345678.safetensors".encode()) <= NAME_MAX
    assert names[1][:100] == names[2][:100] and names[1] != names[2]  # cut, with a digest of the whole
    assert sorted(p.name for p in (full / "videos").iterdir()) == sorted(f"{n}.mp4" for n in names)


# -- 3. resume keeps a sample only if its files and facts match -----------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_3_resume_regenerates_every_sample_whose_files_or_entry_were_tampered_with(tmp_path):
    out = tmp_path / "runs"
    done = ppsvd(*SIM, "--nproc", "1", "--num-samples", "8", "--output-dir", out, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(out.iterdir())
    original = _latents(run)
    path = {i: run / "latents" / f"sample_{i:05d}.safetensors" for i in range(8)}
    meta = {"index": "0", "layout": "B F C H W"}
    shape = load_file(str(path[0]))["latents"].shape
    save_file({"latents": torch.zeros(shape)}, str(path[0]), metadata=meta)  # zeros, same shape and dtype
    save_file({"latents": torch.full(shape, float("nan"))}, str(path[1]), metadata=meta)  # NaN
    flipped = bytearray(path[2].read_bytes())
    flipped[-5] ^= 0x01  # one flipped bit in the data
    path[2].write_bytes(bytes(flipped))
    save_file({"latents": load_file(str(path[3]))["latents"].half()}, str(path[3]), metadata=meta)  # fp16 copy
    a, b = path[4].read_bytes(), path[5].read_bytes()
    path[4].write_bytes(b)  # two files swapped
    path[5].write_bytes(a)
    # A forged entry points outside the run dir, with the digest of what is there.
    victim = tmp_path / "victim"
    victim.write_bytes(b"a user's file")
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["samples"][6]
    entry["latents"] = "../../victim"
    entry["files"] = {"../../victim": "sha256:" + hashlib.sha256(victim.read_bytes()).hexdigest()}
    (run / "manifest.json").write_text(json.dumps(manifest))
    outside = snapshot(tmp_path, skip=run)

    done = ppsvd("simulate", "--resume", run, "--no-progress", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 8 samples kept, 7 to generate" in done.stderr, done.stderr
    assert _latents(run) == original  # every file bitwise as the uninterrupted run wrote it
    assert snapshot(tmp_path, skip=run) == outside
    listed = json.loads((run / "manifest.json").read_text())["samples"]
    assert [e["latents"] for e in listed] == [f"latents/sample_{i:05d}.safetensors" for i in range(8)]

    # config.json edited after the run started (the journal and the marker know the truth), or
    # broken: one line, exit 2, the run directory untouched.
    config = json.loads((run / "config.json").read_text())
    for change, needle in (
        (("job", "seed", 4), "config.json was edited after the run started: seed 4 (the run was made with 3)"),
        (("job", "total_steps", 8), "total_steps 8 (the run was made with 4)"),
        (("job", "seed", "three"), "seed 'three' is not an integer"),
        (("svd", "noise_aug_strength", "NaN"), "noise_aug_strength"),
    ):
        edited = json.loads(json.dumps(config))
        section, name, value = change
        edited[section][name] = value
        (run / "config.json").write_text(json.dumps(edited))
        before = snapshot(run)
        done = ppsvd("simulate", "--resume", run)
        one_line(done.returncode, done.stderr, 2, needle)
        assert snapshot(run) == before
    (run / "config.json").write_text("[1, 2]")
    done = ppsvd("simulate", "--resume", run)
    one_line(done.returncode, done.stderr, 2, "config.json holds a list")


def _latents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "latents").iterdir())}


# -- 4. a failed encode fails the sample ----------------------------------------------------------


def test_4_a_frame_rate_ffmpeg_cannot_write_is_refused_before_launch(tmp_path):
    done = ppsvd(*TINY, "--fps", "100000000000", "--output-dir", tmp_path / "runs")
    one_line(done.returncode, done.stderr, 2, "--fps 100000000000 is above 2147483647")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_4_an_encode_that_writes_no_valid_video_fails_the_sample_and_resume_makes_it(tmp_path):
    import imageio_ffmpeg

    real = imageio_ffmpeg.get_ffmpeg_exe()
    fake = tmp_path / "ffmpeg"
    # An encoder that exits 0 but writes garbage after an ftyp header; reading a video back goes
    # to the real ffmpeg (what a broken build, or a full disk ffmpeg did not notice, looks like).
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"-f null"*) exec "{real}" "$@";; esac\n'
        'for last; do :; done\ncat > /dev/null\nprintf "\\000\\000\\000\\030ftypisom garbage" > "$last"\nexit 0\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "runs"
    done = ppsvd(*TINY, "--nproc", "1", "--output-dir", out, env={"IMAGEIO_FFMPEG_EXE": str(fake)}, timeout=170)
    one_line(done.returncode, done.stderr, 1, "ffmpeg wrote no valid video for builtin-s0.mp4")
    run = next(out.iterdir())
    assert not (run / "videos" / "builtin-s0.mp4").exists()
    assert (run / "manifest.jsonl").read_text() == ""  # the sample is not listed as finished
    done = ppsvd("run", "--resume", run, "--no-progress", timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert imageio_ffmpeg.count_frames_and_secs(str(run / "videos" / "builtin-s0.mp4"))[0] == 4


# -- 5. numbers finite and in range, before launch ------------------------------------------------


def test_5_non_finite_and_overflowing_numbers_are_refused_before_launch(tmp_path):
    import ppsvd as api
    from ppsvd.errors import ConfigError

    image = png(tmp_path / "cat.png")
    nan_job = tmp_path / "nan.jsonl"
    nan_job.write_text(json.dumps({"image": str(image)}) + "\n" + '{"image": "cat.png", "noise_aug_strength": NaN}\n')
    seed_job = tmp_path / "seed.jsonl"
    seed_job.write_text('{"image": "cat.png", "seed": 1e300}\n')
    out = tmp_path / "runs"
    for argv, needle in (
        ([*TINY, "--noise-aug-strength", "nan"], "--noise-aug-strength nan is not a finite number"),
        ([*TINY, "--noise-aug-strength", "inf"], "--noise-aug-strength inf is not a finite number"),
        ([*TINY, "--min-guidance-scale", "-inf"], "--min-guidance-scale -inf is not a finite number"),
        ([*TINY, "--inputs", nan_job], "--inputs entry 2"),
        ([*TINY, "--inputs", seed_job], "seed 1.000e+300 is above 18446744073709551615"),
        ([*SIM, "--seed", str(2**64)], f"--seed {2**64} is above 18446744073709551615"),
        ([*SIM, "--seed", str(2**64 - 1), "--num-samples", "2"], "gives sample 1 the seed 18446744073709551616"),
        ([*SIM, "--timeout", "inf"], "--timeout inf is not a finite number"),
    ):
        done = ppsvd(*argv, "--output-dir", out)
        one_line(done.returncode, done.stderr, 2, needle)
        assert not out.exists()
    with pytest.raises(ConfigError, match="seed=18446744073709551615 gives sample 1"):  # the keyword, from Python
        api.simulate(seed=2**64 - 1, num_samples=2, output_dir=out)


# -- 6. workers that all end early end the run ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("layout", [["--nproc", "1"], ["--nproc", "2", "--strategy", "cfg"]])
def test_6_workers_that_all_exit_0_early_end_the_run_with_one_line(tmp_path, layout):
    argv = [*SIM, *layout, "--num-samples", "16", "--step-ms", "20", "--output-dir", tmp_path / "runs"]
    started = time.monotonic()
    done = ppsvd(*argv, env={"PPSVD_FAULT": "0:3:exit0"}, timeout=120)
    one_line(done.returncode, done.stderr, 1, "stage 0 ended before finishing its work")
    assert time.monotonic() - started < 60


# -- 7. URL images: bounded, checked, decoded once, never kept at full size ------------------------


class _Images(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: dict[str, int] = {}
    bodies: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?")[0]
        self.counts[path] = self.counts.get(path, 0) + 1
        try:
            if path == "/drip.png":  # one byte every 0.25 s, for ever
                self._head(200, 10**6)
                while True:
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.25)
            elif path == "/error.png":  # an error page whose body is an image
                self._head(500, len(self.bodies["/ok-0.png"]))
                self.wfile.write(self.bodies["/ok-0.png"])
            elif path == "/huge.png":  # announces 10 GB
                self._head(200, 10 * 2**30)
            elif path == "/endless.png":  # no length, more than the limit
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                block = b"\0" * 2**20
                for _ in range(80):
                    self.wfile.write(block)
            else:
                body = self.bodies[path]
                self._head(200, len(body))
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, KeyError):
            pass

    def _head(self, status: int, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(length))
        self.end_headers()


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (PIL checks the size when it opens it)."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # 'IHDR' + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def image_server():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 100, 200)).save(buffer, format="PNG")
    _Images.bodies = {"/ok-0.png": buffer.getvalue(), "/bomb.png": _bomb_png(12000, 12000)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_7_url_images_are_bounded_in_time_and_bytes_and_need_http_200(image_server, tmp_path):
    out = tmp_path / "runs"
    for path, needle, env in (
        ("/drip.png", "took longer than 2 s in all", {"DIFFUSERS_REQUEST_TIMEOUT": "2"}),
        ("/error.png", "the server answered HTTP 500", {}),
        ("/huge.png", "more than the 67108864-byte limit", {}),
        ("/endless.png", "more than the 67108864-byte limit", {}),
        ("/bomb.png", "too many pixels", {}),
    ):
        started = time.monotonic()
        done = ppsvd(*TINY, "--image", image_server + path, "--output-dir", out, env=env)
        one_line(done.returncode, done.stderr, 2, needle)
        assert f"--image {image_server}{path}" in done.stderr
        assert time.monotonic() - started < 30, path
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_7_url_images_are_fetched_and_decoded_once_and_kept_only_at_the_target_size(image_server):
    """Five 25-megapixel images (75 MB each decoded), each used twice as samples cycle: each URL is
    fetched once, and what stays in memory is the 64x64 image, not the full size."""
    import io

    for k in range(5):  # 25-megapixel images, each a different colour
        buffer = io.BytesIO()
        Image.new("RGB", (5000, 5000), (40 * k, 100, 200)).save(buffer, format="PNG", compress_level=1)
        _Images.bodies[f"/ok-{k}.png"] = buffer.getvalue()
    _Images.counts.clear()
    script = (
        "import resource, sys\n"
        "from ppsvd.io.images import load_sample_image\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for _ in range(2):\n"
        "    for k in range(5):\n"
        "        assert load_sample_image(f'{sys.argv[1]}/ok-{k}.png', 64, 64).size == (64, 64)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, image_server], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {k: v for k, v in _Images.counts.items() if k.startswith("/ok-")} == {f"/ok-{k}.png": 1 for k in range(5)}
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 250, f"peak memory grew by {grown_mib} MiB: full-size images were kept"


# -- 9. only the launcher's own workers are ever killed -------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_9_a_forged_host_entry_and_abort_key_kill_no_unrelated_process(tmp_path, no_fault):
    from ppsvd.backends.hosts import HostFacts, host_key, this_host
    from ppsvd.runtime.control import ABORT_KEY, key

    bystander = subprocess.Popen(["sleep", "300"])
    try:
        proc = start(
            *SIM,
            "--nproc",
            "2",
            "--num-samples",
            "2000",
            "--step-ms",
            "5",
            "--output-dir",
            tmp_path / "r",
            tmp_path=tmp_path,
        )
        store, run_id = run_store(proc)
        here = this_host()
        ticks = Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
        forged = HostFacts(here.hostname, here.network, here.files, here.processes, bystander.pid, ticks)
        store.set(host_key(run_id, 1), forged.to_json())
        store.compare_set(key(run_id, ABORT_KEY), "", "1\tforged by another local process")
        code, output = finish(proc)
        one_line(code, output, 1, "stage 1 failed: forged by another local process")
        time.sleep(2.0)  # well past the launcher's 1 s kill grace
        assert bystander.poll() is None, "the launcher killed a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


# -- 10. latents follow the umask and are byte-reproducible (11: and no 'inf' plan) ------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_10_latents_follow_the_umask_and_two_runs_write_the_same_bytes(tmp_path):
    runs = []
    for name in ("a", "b"):
        done = ppsvd(
            *SIM,
            "--nproc",
            "1",
            "--num-samples",
            "4",
            "--step-ms",
            "0",
            "--output-dir",
            tmp_path / name,
            umask=0o027,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert " inf" not in done.stdout, done.stdout  # 11: no "planned samples/s inf" with --step-ms 0
        runs.append(next((tmp_path / name).iterdir()))
    for path in runs[0].rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o750 if path.is_dir() else 0o640), path
    assert _latents(runs[0]) == _latents(runs[1])


# -- 11. the smaller ones ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("transport", ["gloo", "zmq"])
def test_11_a_killed_guidance_half_is_the_one_named_and_its_sockets_go(tmp_path, no_fault, transport):
    from ppsvd.backends.hosts import read_host

    argv = [
        *SIM,
        "--nproc",
        "2",
        "--strategy",
        "cfg",
        "--transport",
        transport,
        "--num-samples",
        "2000",
        "--step-ms",
        "5",
        "--output-dir",
        tmp_path / "r",
    ]
    proc = start(*argv, tmp_path=tmp_path)
    store, run_id = run_store(proc)
    wait_for_samples(tmp_path / "r", 3, proc)
    victim = read_host(store, run_id, 1)
    os.kill(victim.pid, signal.SIGKILL)
    code, output = finish(proc)
    line = one_line(code, output, 1, "stage 1 ")  # the killed half, never the survivor
    assert "stage 1 was killed by SIGKILL" in line or "stage 1 failed: its guidance link" in line, line
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ppsvd")] == []


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_11_a_second_writer_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path, no_fault):
    out = tmp_path / "r"
    proc = start(*SIM, "--nproc", "2", "--num-samples", "300", "--step-ms", "5", "--output-dir", out, tmp_path=tmp_path)
    run = wait_for_samples(out, 3, proc)
    done = ppsvd("simulate", "--resume", run, "--no-progress")
    one_line(done.returncode, done.stderr, 2, f"{run} is in use by another ppsvd process")
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher dies with no chance to clean up
    finish(proc)
    done = ppsvd("simulate", "--resume", run, "--step-ms", "0", "--no-progress", timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    from ppsvd.config import RunConfig
    from tests.helpers import read_latents, reference_latents

    config = RunConfig.from_json(json.loads((run / "config.json").read_text())).replace(step_ms=0.0)
    expected, got = reference_latents(config), read_latents(run)
    assert sorted(got) == list(range(300)) and all(torch.equal(got[i], expected[i]) for i in range(300))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_11_resume_where_nothing_can_be_written_is_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small file system (permissions do not stop root)")
    out = tmp_path / "runs"
    done = ppsvd(*SIM, "--nproc", "1", "--num-samples", "3", "--output-dir", out)
    assert done.returncode == 0, done.stderr[-3000:]
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = _cut(next(out.iterdir()), mount / "run", lose=[2])
        for options, needle in (("remount,ro", "Read-only file system"), ("remount,rw", "No space left on device")):
            subprocess.run(["mount", "-o", options, str(mount)], check=True)
            if "rw" in options:  # fill it up
                with open(mount / "filler", "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\0" * 2**16)
                    except OSError:
                        pass
            done = ppsvd("simulate", "--resume", run, "--no-progress")
            one_line(done.returncode, done.stderr, 2, f"--resume {run}: cannot write there ({needle})")
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.slow
@pytest.mark.timeout(100)
def test_11_a_low_open_file_limit_is_one_line(tmp_path):
    import resource

    # Workers are processes of their own (python -m ppsvd.runtime.entry): 4 of them start with the 32
    # open files some systems allow; 16 are too few.
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    argv = [*SIM, "--nproc", "4", "--num-samples", "2", "--timeout", "10", "--output-dir", tmp_path / "r"]
    done = subprocess.run(
        [sys.executable, "-m", "ppsvd", *argv],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=90,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    one_line(done.returncode, done.stderr, 2, "too many open files: this process may have 16 open (ulimit -n)")


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("gap_s", [0.04, 0.2])
def test_11_two_sigints_in_a_row_are_one_line_and_130(tmp_path, no_fault, gap_s):
    out = tmp_path / "r"
    proc = start(*SIM, "--nproc", "2", "--num-samples", "400", "--step-ms", "5", "--output-dir", out, tmp_path=tmp_path)
    wait_for_samples(out, 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap_s)
    os.killpg(proc.pid, signal.SIGINT)
    code, output = finish(proc)
    one_line(code, output, 130, "interrupted by SIGINT")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_11_an_interrupt_before_the_run_starts_leaves_no_run_directory(tmp_path, no_fault):
    out = tmp_path / "r"
    proc = start(*SIM, "--nproc", "2", "--num-samples", "4", "--output-dir", out, tmp_path=tmp_path)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(out.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    code, output = finish(proc)
    if "finished and kept" in output:
        pytest.skip("the run started before the signal arrived")
    line = one_line(code, output, 130, "interrupted by SIGINT")  # "... before the run started" once it is named
    assert "kept in" not in line and list(out.iterdir()) == []


def test_11_job_file_entries_and_fifos_are_named_as_what_they_are(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    job = tmp_path / "job.jsonl"
    job.write_text('{"image": "missing.png"}\n')
    fifo_job = tmp_path / "fifo.jsonl"
    fifo_job.write_text('{"image": "pipe.png"}\n')
    out = tmp_path / "runs"
    for argv, needle in (
        (["--inputs", job], f"--inputs entry 1 ({tmp_path / 'missing.png'}): no such file"),
        (["--inputs", fifo_job], f"--inputs entry 1 ({fifo}): is a FIFO, not a regular file"),
        (["--image", fifo], f"--image {fifo}: is a FIFO, not a regular file"),
    ):
        done = ppsvd(*TINY, *argv, "--output-dir", out, timeout=60)
        one_line(done.returncode, done.stderr, 2, needle)
        assert not out.exists()
