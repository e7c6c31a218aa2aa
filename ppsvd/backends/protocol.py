"""The message between stages: a small JSON header plus named raw tensors.

Shared by every transport. The header says what follows (each tensor's name, dtype and
shape); the receiver checks it against what it expects *before* it receives or interprets
any payload, so a malformed or oversized message is an error, never a crash or a huge
allocation. Nothing received is ever unpickled: the header is JSON, tensors are raw bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ppsvd.errors import ProtocolError

PROTOCOL_VERSION = 1
MAGIC = b"PPSV"
# Fixed size of the header block that torch.distributed transports send first.
HEADER_BYTES = 8192
_PREFIX = struct.Struct("<4sI")  # magic, JSON length

KIND_SAMPLE = "sample"
KIND_END = "end"
KINDS = (KIND_SAMPLE, KIND_END)

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}
_NAMES_BY_DTYPE = {v: k for k, v in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _NAMES_BY_DTYPE[dtype]
    except KeyError:
        raise ProtocolError(
            f"dtype {dtype} cannot travel between stages; use one of {', '.join(DTYPE_NAMES)}"
        ) from None


@dataclass(frozen=True)
class TensorSpec:
    """What one named tensor of a message must look like."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=DTYPE_NAMES[self.dtype]).element_size()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def of(name: str, tensor: torch.Tensor) -> TensorSpec:
        return TensorSpec(name, dtype_name(tensor.dtype), tuple(tensor.shape))


Schema = Mapping[str, TensorSpec]
"""What a receiver expects in every sample message: name -> spec."""


@dataclass
class Message:
    """One hand-off between stages: a sample's state, or the end of the stream."""

    kind: str
    index: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """Small JSON-able values that travel with the sample (image name, timings)."""

    @staticmethod
    def end(index: int) -> Message:
        """End of stream; index is the number of samples that were sent before it."""
        return Message(kind=KIND_END, index=index)

    @property
    def is_end(self) -> bool:
        return self.kind == KIND_END

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec.of(name, t) for name, t in self.tensors.items()]

    def header(self) -> Header:
        return Header(kind=self.kind, index=self.index, tensors=tuple(self.specs()), meta=dict(self.meta))


@dataclass(frozen=True)
class Header:
    kind: str
    index: int
    tensors: tuple[TensorSpec, ...]
    meta: dict[str, Any]

    @property
    def payload_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.tensors)

    def to_bytes(self) -> bytes:
        body = json.dumps(
            {
                "v": PROTOCOL_VERSION,
                "kind": self.kind,
                "index": self.index,
                "tensors": [s.to_json() for s in self.tensors],
                "meta": self.meta,
            },
            separators=(",", ":"),
        ).encode()
        return _PREFIX.pack(MAGIC, len(body)) + body

    def to_block(self) -> bytes:
        """The header padded to HEADER_BYTES, for transports that need a fixed size."""
        raw = self.to_bytes()
        if len(raw) > HEADER_BYTES:
            raise ProtocolError(f"header of {len(raw)} bytes exceeds {HEADER_BYTES}; keep message meta small")
        return raw + bytes(HEADER_BYTES - len(raw))


def parse_header(raw: bytes | memoryview, *, max_bytes: int = HEADER_BYTES) -> Header:
    """Parse and structurally validate a header; raise ProtocolError on anything unexpected."""
    raw = bytes(raw)
    if len(raw) < _PREFIX.size:
        raise ProtocolError(f"header of {len(raw)} bytes is too short")
    magic, length = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: the peer is not a ppsvd stage of this version")
    if length > max_bytes - _PREFIX.size or _PREFIX.size + length > len(raw):
        raise ProtocolError(
            f"header declares {length} bytes of JSON, more than it carries or the {max_bytes}-byte limit"
        )
    try:
        data = json.loads(raw[_PREFIX.size : _PREFIX.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("header is not a JSON object")
    if data.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {data.get('v')!r}, expected {PROTOCOL_VERSION}: all stages must run the same ppsvd"
        )
    kind, index = data.get("kind"), data.get("index")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ProtocolError(f"bad sample index {index!r}")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("header meta is not a JSON object")
    specs = []
    for entry in data.get("tensors", []):
        if not isinstance(entry, dict):
            raise ProtocolError(f"bad tensor entry {entry!r}")
        name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
        if not isinstance(name, str) or dtype not in DTYPE_NAMES:
            raise ProtocolError(f"bad tensor name or dtype: {name!r} {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ProtocolError(f"bad shape {shape!r} for tensor {name!r}")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    return Header(kind=kind, index=index, tensors=tuple(specs), meta=meta)


def check_against_schema(header: Header, schema: Schema | None, *, max_payload_bytes: int | None = None) -> None:
    """Refuse a header whose tensors are not exactly what the receiver expects."""
    if header.kind == KIND_END:
        if header.tensors:
            raise ProtocolError("end-of-stream message carries tensors")
        return
    if max_payload_bytes is not None and header.payload_bytes > max_payload_bytes:
        raise ProtocolError(f"message of {header.payload_bytes} bytes exceeds the {max_payload_bytes}-byte limit")
    if schema is None:
        return
    got = {s.name: s for s in header.tensors}
    if len(got) != len(header.tensors):
        raise ProtocolError("message names a tensor twice")
    if set(got) != set(schema):
        raise ProtocolError(f"message tensors {sorted(got)} differ from the expected {sorted(schema)}")
    for name, want in schema.items():
        if got[name] != want:
            raise ProtocolError(
                f"tensor {name!r} is {got[name].dtype}{list(got[name].shape)}, expected {want.dtype}{list(want.shape)}"
            )


def schema_payload_bytes(schema: Schema) -> int:
    return sum(spec.nbytes for spec in schema.values())


def empty_like_spec(spec: TensorSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.empty(spec.shape, dtype=DTYPE_NAMES[spec.dtype], device=device)


def tensor_from_bytes(spec: TensorSpec, data: bytes | bytearray | memoryview) -> torch.Tensor:
    """Build a tensor from received raw bytes after checking the length against the spec."""
    view = memoryview(data)
    if view.nbytes != spec.nbytes:
        raise ProtocolError(f"tensor {spec.name!r} frame has {view.nbytes} bytes, expected {spec.nbytes}")
    if spec.nbytes == 0:
        return empty_like_spec(spec)
    if view.readonly:
        view = memoryview(bytearray(view))
    return torch.frombuffer(view, dtype=DTYPE_NAMES[spec.dtype]).reshape(spec.shape)


def tensor_to_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (bfloat16 included)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
