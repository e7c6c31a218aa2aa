"""A real `ppsvd serve` in a subprocess on a free loopback port, for the service's tests."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m ppsvd serve ARGS --port P --state-dir DIR`, its stderr in DIR/../server-N.log."""

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        torchrun: tuple[str, ...] | None = None,
        rank_exit_codes: bool = False,
    ):
        """torchrun: start it as `python -m torch.distributed.run --standalone TORCHRUN -m ppsvd serve ...`.
        rank_exit_codes: each rank through a shell that prints `ppsvd rank R exit CODE` once it ended
        (torchrun does not say after a signal); the shell ignores the signals torchrun passes to the
        rank's process group, the rank gets them as without it."""
        self.state_dir = Path(state_dir)
        self.torchrun = torchrun
        self.rank_exit_codes = rank_exit_codes
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.env.pop("PPSVD_API_KEY", None)
        if api_key:
            self.env["PPSVD_API_KEY"] = api_key
        self.proc: subprocess.Popen | None = None
        self.log_path = self.state_dir.parent / f"server-{self.port}.log"

    def start(self) -> Server:
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "ppsvd", "serve", *self.args, "--port", str(self.port)]
        cmd += ["--state-dir", str(self.state_dir)]
        if self.torchrun is not None:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", *self.torchrun]
            if self.rank_exit_codes:
                script = f"trap '' TERM INT HUP; {shlex.join(cmd)}; echo ppsvd rank $RANK exit $?"
                cmd = [*torchrun, "--no-python", "sh", "-c", script]
            else:
                cmd = [*torchrun, *cmd[1:]]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout_s: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=30, **kw)

    def post_image(self, image: bytes, timeout: float = 30, **fields) -> httpx.Response:
        files = {"input_reference": ("in.png", image, "image/png")}
        data = {k: str(v) for k, v in fields.items()}
        return httpx.post(f"{self.url}/v1/videos", files=files, data=data, headers=self.headers, timeout=timeout)

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "the condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{what} did not happen within {timeout_s} s:\n{self.output()}")

    def status(self, job_id: str) -> str:
        return self.get(f"/v1/videos/{job_id}").json()["status"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                workers = children_of(self.proc.pid)
                self.proc.kill()
                self.proc.wait(timeout=10)
                for pid in workers:  # torchrun's ranks do not die with it
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        if getattr(self, "log", None) is not None:
            self.log.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def png_bytes(width: int, height: int, flip: bool = False) -> bytes:
    import io

    from PIL import Image

    from ppsvd.io.images import builtin_image

    image = builtin_image(width, height)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with that RANK."""
    import psutil

    for child in psutil.Process(torchrun_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "ppsvd" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} under torchrun {torchrun_pid}")


def children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
