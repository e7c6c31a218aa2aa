"""The stage-to-stage message: header round trip and every way a received header can be wrong."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from ppsvd.backends.protocol import (
    HEADER_BYTES,
    MAGIC,
    PROTOCOL_VERSION,
    Header,
    Message,
    TensorSpec,
    check_against_schema,
    parse_header,
    tensor_from_bytes,
    tensor_to_bytes,
)
from ppsvd.errors import ProtocolError

LATENT = TensorSpec("latents", "float16", (1, 14, 4, 64, 64))
SCHEMA = {"latents": LATENT, "step": TensorSpec("step", "int64", ())}


def raw_header(body: dict | bytes, *, magic: bytes = MAGIC, length: int | None = None) -> bytes:
    """Bytes of a header with any content, valid or not."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return struct.pack("<4sI", magic, len(data) if length is None else length) + data


def good_body(**changes) -> dict:
    body = {
        "v": PROTOCOL_VERSION,
        "kind": "sample",
        "index": 3,
        "tensors": [{"name": "latents", "dtype": "float16", "shape": [1, 14, 4, 64, 64]}],
        "meta": {},
    }
    body.update(changes)
    return body


def header_of(**tensors: TensorSpec) -> Header:
    return Header(kind="sample", index=0, tensors=tuple(tensors.values()), meta={})


# -- round trips --------------------------------------------------------------------------


def test_header_round_trip_keeps_everything():
    msg = Message(
        "sample",
        7,
        {"latents": torch.zeros(1, 14, 4, 64, 64, dtype=torch.float16), "step": torch.tensor(5)},
        meta={"image": "cat.png", "t": 1.5},
    )
    header = msg.header()
    for raw in (header.to_bytes(), header.to_block()):
        back = parse_header(raw)
        assert back == header
        assert back.tensors == (LATENT, TensorSpec("step", "int64", ()))
        assert back.meta == {"image": "cat.png", "t": 1.5}
    assert len(header.to_block()) == HEADER_BYTES


def test_end_message_round_trip():
    back = parse_header(Message.end(12).header().to_block())
    assert back.kind == "end" and back.index == 12 and back.tensors == ()
    check_against_schema(back, SCHEMA)  # an end message never needs the sample schema


def test_header_too_big_for_block_is_refused_at_the_sender():
    msg = Message("sample", 0, meta={"blob": "x" * HEADER_BYTES})
    with pytest.raises(ProtocolError, match="exceeds"):
        msg.header().to_block()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8])
def test_tensor_bytes_round_trip_is_bitwise(dtype):
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, 5, generator=gen).mul(100).to(dtype)
    spec = TensorSpec.of("x", source)
    back = tensor_from_bytes(spec, bytes(tensor_to_bytes(source)))
    assert back.dtype == dtype and back.shape == source.shape
    assert torch.equal(back.view(torch.uint8), source.view(torch.uint8))


def test_bf16_round_trip_through_a_writable_buffer():
    source = torch.tensor([1.0, -2.5, 3.14159, 1e-3], dtype=torch.bfloat16)
    buf = bytearray(tensor_to_bytes(source))
    back = tensor_from_bytes(TensorSpec.of("x", source), buf)
    assert torch.equal(back, source)


def test_tensor_to_bytes_makes_non_contiguous_contiguous():
    source = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    back = tensor_from_bytes(TensorSpec.of("x", source), bytes(tensor_to_bytes(source)))
    assert torch.equal(back, source)


def test_tensor_from_bytes_with_wrong_length_is_refused():
    spec = TensorSpec("x", "float32", (4,))
    with pytest.raises(ProtocolError, match="15 bytes, expected 16"):
        tensor_from_bytes(spec, bytes(15))
    with pytest.raises(ProtocolError, match="17 bytes, expected 16"):
        tensor_from_bytes(spec, bytes(17))


# -- malformed headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "too short"),
        (b"PPS", "too short"),
        (raw_header(good_body(), magic=b"XXXX"), "bad magic"),
        (raw_header(b"{not json"), "not valid JSON"),
        (raw_header(b"\xff\xfe\xfd"), "not valid JSON"),
        (raw_header(b"[1, 2]"), "not a JSON object"),
        (raw_header(good_body(v=PROTOCOL_VERSION + 1)), "protocol version"),
        (raw_header(good_body(v="1")), "protocol version"),
        (raw_header({k: v for k, v in good_body().items() if k != "v"}), "protocol version"),
        (raw_header(good_body(kind="pickle")), "unknown message kind"),
        (raw_header(good_body(index=-1)), "bad sample index -1"),
        (raw_header(good_body(index=1.5)), "bad sample index"),
        (raw_header(good_body(index=True)), "bad sample index"),
        (raw_header(good_body(index="3")), "bad sample index"),
        (raw_header(good_body(meta=[1])), "meta is not a JSON object"),
        (raw_header(good_body(tensors=["latents"])), "bad tensor entry"),
        (
            raw_header(good_body(tensors=[{"name": "x", "dtype": "complex64", "shape": [1]}])),
            "bad tensor name or dtype",
        ),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "object", "shape": [1]}])), "bad tensor name or dtype"),
        (raw_header(good_body(tensors=[{"name": 5, "dtype": "float32", "shape": [1]}])), "bad tensor name or dtype"),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "float32", "shape": "1x4"}])), "bad shape"),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "float32", "shape": 4}])), "bad shape"),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "float32", "shape": [2, -1]}])), "bad shape"),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "float32", "shape": [2.0]}])), "bad shape"),
        (raw_header(good_body(tensors=[{"name": "x", "dtype": "float32", "shape": [True]}])), "bad shape"),
    ],
)
def test_malformed_header_is_a_protocol_error(raw, match):
    with pytest.raises(ProtocolError, match=match):
        parse_header(raw)


def test_declared_length_over_the_limit_is_refused_before_parsing():
    body = json.dumps(good_body()).encode()
    with pytest.raises(ProtocolError, match="declares"):
        parse_header(raw_header(body, length=HEADER_BYTES * 4) + bytes(HEADER_BYTES * 4))


def test_declared_length_longer_than_the_bytes_is_refused():
    body = json.dumps(good_body()).encode()
    with pytest.raises(ProtocolError, match="declares"):
        parse_header(raw_header(body, length=len(body) + 10))


def test_declared_length_at_u32_max_is_refused():
    with pytest.raises(ProtocolError, match="declares"):
        parse_header(raw_header(b"{}", length=2**32 - 1))


def test_zero_padding_after_the_json_is_ignored():
    raw = raw_header(good_body()) + bytes(100)
    assert parse_header(raw).index == 3


# -- schema -------------------------------------------------------------------------------


def test_header_matching_the_schema_passes():
    check_against_schema(header_of(latents=LATENT, step=SCHEMA["step"]), SCHEMA)
    check_against_schema(header_of(step=SCHEMA["step"], latents=LATENT), SCHEMA)  # order is free


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        (
            {"latents": TensorSpec("latents", "float16", (1, 14, 4, 64, 32)), "step": SCHEMA["step"]},
            r"float16\[1, 14, 4, 64, 32\]",
        ),
        ({"latents": TensorSpec("latents", "float32", LATENT.shape), "step": SCHEMA["step"]}, "is float32"),
        ({"latents": LATENT}, "differ from the expected"),
        (
            {"latents": LATENT, "step": SCHEMA["step"], "extra": TensorSpec("extra", "uint8", (1,))},
            "differ from the expected",
        ),
        ({"latent": TensorSpec("latent", "float16", LATENT.shape), "step": SCHEMA["step"]}, "differ from the expected"),
    ],
)
def test_schema_mismatch_is_a_protocol_error(tensors, match):
    with pytest.raises(ProtocolError, match=match):
        check_against_schema(header_of(**tensors), SCHEMA)


def test_duplicate_tensor_name_is_refused():
    header = Header(kind="sample", index=0, tensors=(LATENT, LATENT), meta={})
    with pytest.raises(ProtocolError, match="twice"):
        check_against_schema(header, {"latents": LATENT})


def test_payload_over_the_limit_is_refused_even_without_a_schema():
    header = header_of(latents=LATENT)
    check_against_schema(header, None, max_payload_bytes=LATENT.nbytes)
    with pytest.raises(ProtocolError, match=f"{LATENT.nbytes} bytes exceeds the {LATENT.nbytes - 1}-byte limit"):
        check_against_schema(header, None, max_payload_bytes=LATENT.nbytes - 1)


def test_huge_declared_shape_is_refused_by_the_limit_not_allocated():
    huge = TensorSpec("latents", "float32", (2**20, 2**20, 2**20))
    with pytest.raises(ProtocolError, match="exceeds"):
        check_against_schema(header_of(latents=huge), None, max_payload_bytes=2**30)


def test_end_message_with_tensors_is_refused():
    header = Header(kind="end", index=0, tensors=(LATENT,), meta={})
    with pytest.raises(ProtocolError, match="end-of-stream"):
        check_against_schema(header, SCHEMA)
