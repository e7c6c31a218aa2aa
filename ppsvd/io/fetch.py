"""An input image over http(s): fetched with requests, bounded in total time and in bytes.

requests does the HTTP (redirects, proxies and certificates from the environment, TLS). Its
timeout bounds the connect and each single read, not the transfer: a server that sends one byte
every few seconds never trips it. So the body is read with urllib3's read1 (whatever one socket
read returns) and the whole fetch, connect included, stops at the total limit (overshooting by
at most one read's timeout, itself no longer than what is left); a body larger than
FETCH_MAX_BYTES is refused (at once when the server announces its length); only HTTP 200 counts
(an error page is no image, even when its body is one).
"""

from __future__ import annotations

import os
import time

from ppsvd.errors import InputImageError

FETCH_TIMEOUT_S = 60.0
"""Default limit on a whole fetch; DIFFUSERS_REQUEST_TIMEOUT (diffusers' own setting for
load_image, which ppsvd used before) overrides it."""
READ_TIMEOUT_S = 10.0
"""Longest single connect or read."""
FETCH_MAX_BYTES = 64 * 2**20
"""Largest body accepted: far above any input image a video model is given, far below memory."""
_CHUNK = 2**16


def fetch_timeout_s() -> float:
    try:
        value = float(os.environ.get("DIFFUSERS_REQUEST_TIMEOUT", FETCH_TIMEOUT_S))
    except ValueError:
        return FETCH_TIMEOUT_S
    return value if 0 < value < float("inf") else FETCH_TIMEOUT_S


def fetch_bytes(url: str, what: str) -> bytes:
    """The body of a 200 answer to GET url; InputImageError (one line, starting with `what`) otherwise."""
    import requests

    total = fetch_timeout_s()
    deadline = time.monotonic() + total
    fix = "check the URL, or download the image and pass the file"

    def fail(reason: str) -> InputImageError:
        return InputImageError(f"{what}: could not fetch the image ({reason}); {fix}")

    per_read = min(READ_TIMEOUT_S, total)
    try:
        with requests.get(url, stream=True, timeout=(per_read, per_read)) as response:
            if response.status_code != 200:
                raise fail(f"the server answered HTTP {response.status_code} {response.reason or ''}".strip())
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > FETCH_MAX_BYTES:
                raise fail(f"it is {int(announced)} bytes, more than the {FETCH_MAX_BYTES}-byte limit")
            body = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise fail(f"it took longer than {total:g} s in all; the limit is DIFFUSERS_REQUEST_TIMEOUT")
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
                if len(body) > FETCH_MAX_BYTES:
                    raise fail(f"it is more than the {FETCH_MAX_BYTES}-byte limit")
    except InputImageError:
        raise
    except Exception as exc:  # refused, DNS, TLS, a read that timed out, a connection cut short
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise fail(reason) from None
    if time.monotonic() > deadline:
        raise fail(f"it took longer than {total:g} s in all; the limit is DIFFUSERS_REQUEST_TIMEOUT")
    return bytes(body)
