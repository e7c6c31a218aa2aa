"""What `ppsvd serve` runs: the pipeline's RunConfig plus the service's own settings, checked."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ppsvd.config import RunConfig
from ppsvd.errors import ConfigError

API_KEY_ENV = "PPSVD_API_KEY"
"""Where the API key may come from instead of --api-key (so it stays out of `ps` and shell history)."""
DEFAULT_STATE_DIR = Path("ppsvd-serve")
OUTPUTS = "outputs"
"""The state dir's folder the last stage writes into (latents/, videos/, thumbnails/, config.json)."""
UPLOADS = "uploads"
"""The state dir's folder of accepted input images, one file per job, named by its id."""
DATABASE = "jobs.sqlite3"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """The served pipeline and how the service around it behaves."""

    run: RunConfig
    """The pipeline: model, shape, steps, layout, transport, the per-job defaults (run's options)."""
    host: str = "127.0.0.1"
    port: int = 8000
    state_dir: Path = DEFAULT_STATE_DIR
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <key>`; required when host is not loopback."""
    max_queue: int = 1000
    """Jobs waiting at most; a POST beyond gets 429 with Retry-After."""
    max_upload_mb: float = 20.0
    """Largest request body (the image and the fields) in MiB; larger gets 413."""
    max_image_pixels: int = 40_000_000
    """Largest input image in pixels (width x height, checked before decoding: decompression bombs)."""
    drain_timeout_s: float = 120.0
    """SIGTERM/SIGINT: how long the jobs in flight may take to finish before the workers are stopped."""
    allow_image_urls: bool = False
    """Let requests name their image by an http(s) URL, which the server then fetches."""
    max_restarts: int = 3
    """Consecutive start-up failures of the workers after which the service gives up."""

    @property
    def outputs_dir(self) -> Path:
        return self.state_dir / OUTPUTS

    @property
    def uploads_dir(self) -> Path:
        return self.state_dir / UPLOADS

    @property
    def database(self) -> Path:
        return self.state_dir / DATABASE

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def validate(self, *, listens: bool = True) -> ServeConfig:
        """listens: False for a rank of torchrun's other than 0, which opens no port (and needs no key)."""
        if listens and not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"--host {self.host} listens beyond this machine; give an API key (--api-key, or the "
                f"{API_KEY_ENV} environment variable) so that only clients with it can use the service"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port; use 1..65535 (default 8000)")
        for flag, value in (
            ("--max-queue", self.max_queue),
            ("--max-upload-mb", self.max_upload_mb),
            ("--max-image-pixels", self.max_image_pixels),
            ("--drain-timeout", self.drain_timeout_s),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} {value} must be positive")
        if self.api_key is not None and (len(self.api_key) < 8 or any(c.isspace() for c in self.api_key)):
            raise ConfigError(
                "the API key is shorter than 8 characters or contains spaces; use a long random one, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        b = self.run.job.latent_shape[0]
        if b != 1:
            shape = " ".join(map(str, self.run.job.latent_shape))
            raise ConfigError(
                f"--latent-shape {shape}: a served job is one video, so B must be 1; use --latent-shape 1 "
                + " ".join(map(str, self.run.job.latent_shape[1:]))
            )
        return self


def api_key_from(option: str | None) -> str | None:
    """--api-key, else the PPSVD_API_KEY environment variable, else None (no key)."""
    if option:
        return option
    value = os.environ.get(API_KEY_ENV, "")
    return value or None
