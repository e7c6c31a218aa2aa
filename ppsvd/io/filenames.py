"""File names made from user input (an image's name, a model folder's name).

Safe characters only, never a leading dash (a file named '-rf.mp4' is an option to the next
shell command that globs it) or dot (hidden), and short enough that every name the writer makes
from it fits the 255-byte file-name limit of Linux file systems: the writer adds '-s<seed>',
'-<k>' for repeats, '_b<j>' per video, then '.tmp-' ... '-xxxxxxxx.safetensors' while it writes
(ppsvd.io.atomic). A longer name is cut and given a digest of the whole, so two long names that
share a beginning stay apart and the same input gets the same name in every run (and on resume).
"""

from __future__ import annotations

import hashlib
import re

NAME_MAX = 255
"""Bytes in one file name on ext4, xfs, btrfs, tmpfs, ..."""
STEM_MAX = 128
"""Longest stem taken from user input. The rest of a name's budget: '-s' + 20 digits of a seed,
'-' + up to 20 digits of a repeat count, '_b' + a video number, and the writer's temporary
affixes ('.tmp-', '-' + 8 hex digits, '.safetensors'): 128 + 22 + 21 + 22 + 26 < NAME_MAX."""
_DIGEST_CHARS = 10


def safe_stem(text: str, limit: int = STEM_MAX) -> str:
    """`text` with anything but letters, digits, '.', '_' and '-' replaced by '_', no leading
    '-', '.' or '_' and no trailing '.' or '_', at most `limit` characters (ASCII: bytes). Empty
    when nothing is left (the caller names it)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    stem = re.sub(r"^[._-]+", "", stem).rstrip("._")
    return shorten(stem, text, limit)


def shorten(name: str, whole: str, limit: int) -> str:
    """`name` if it fits in `limit` characters, else its beginning and a digest of `whole`."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(whole.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{name[: limit - _DIGEST_CHARS - 1].rstrip('._-')}-{digest}"
