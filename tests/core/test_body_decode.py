"""Tests for codex_pool.core.body_decode: request bodies decoded with a cap, never raising."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_pool.core import zstd
from codex_pool.core.body_decode import MAX_DECODED_BYTES, TOO_LARGE, UNDECODABLE, decode_body

BODY = json.dumps({"model": "gpt-5.1-codex", "input": [{"text": "héllo " * 500}], "prompt_cache_key": "k"}).encode()


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


@pytest.mark.parametrize("encoding,raw", [
    (None, BODY),
    ("", BODY),
    ("identity", BODY),
    ("gzip", gzip.compress(BODY)),
    ("GZIP", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two members
    ("deflate", zlib.compress(BODY)),
    ("deflate", raw_deflate(BODY)),  # raw deflate, as many servers send it
    ("br", brotli.compress(BODY)),
    ("zstd", zstd.compress(BODY)),
    ("zstd", zstd.compress(BODY[:7]) + zstd.compress(BODY[7:])),  # two frames
    ("gzip, br", brotli.compress(gzip.compress(BODY))),  # undone last-applied first
    ("identity, zstd", zstd.compress(BODY)),
    ("zstd,gzip", gzip.compress(zstd.compress(BODY))),
], ids=lambda v: v if isinstance(v, str) else None)
def test_every_encoding_decodes_whole(encoding, raw):
    got = decode_body(raw, encoding)
    assert got.complete and got.problem is None and got.data == BODY


# what a bomb is made with (fast settings: making it must not cost the test more than decoding it)
BOMB_MAKERS = {
    "zstd": (400 << 20, zstd.compress),  # the case: 400 MB of zeros in 13 KB
    "gzip": (64 << 20, lambda d: gzip.compress(d, compresslevel=1)),
    "x-gzip": (64 << 20, lambda d: gzip.compress(d, compresslevel=1)),
    "deflate": (64 << 20, lambda d: zlib.compress(d, 1)),
    "br": (64 << 20, lambda d: brotli.compress(d, quality=1)),
}


@pytest.mark.parametrize("encoding", sorted(BOMB_MAKERS))
def test_a_bomb_stops_at_the_cap_quickly(encoding):
    """Zeros compress a thousandfold and more: decoding stops just past the cap, whatever follows."""
    size, make = BOMB_MAKERS[encoding]
    bomb = make(b"\0" * size)
    start = time.monotonic()
    got = decode_body(bomb, encoding)
    assert time.monotonic() - start < 2.0
    assert got.problem == TOO_LARGE and not got.complete
    assert len(got.data) == MAX_DECODED_BYTES and got.data == b"\0" * MAX_DECODED_BYTES  # the beginning, for a look
    assert "more than 16 MiB" in got.detail


def test_a_small_limit_gives_the_beginning_of_a_large_body():
    got = decode_body(zstd.compress(BODY), "zstd", limit=100)
    assert (got.problem, got.data) == (TOO_LARGE, BODY[:100])
    assert decode_body(zstd.compress(BODY), "zstd", limit=len(BODY)).data == BODY  # exactly the cap fits


def test_a_bomb_inside_a_chain_is_too_large_not_undecodable():
    bomb = gzip.compress(zstd.compress(b"\0" * (64 << 20)))  # zstd inside gzip
    got = decode_body(bomb, "zstd, gzip", limit=1 << 20)
    assert got.problem == TOO_LARGE


def test_an_identity_body_is_not_capped_it_is_already_in_memory():
    assert decode_body(b"x" * 100, None, limit=10).data == b"x" * 100


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_cut_body_is_undecodable(encoding):
    packed = ENCODERS[encoding](BODY)
    got = decode_body(packed[: len(packed) // 2], encoding)
    assert (got.problem, got.data) == (UNDECODABLE, b"")
    assert got.detail == f"ends before its {encoding} stream does"


@pytest.mark.parametrize("encoding,raw,detail", [
    ("gzip", b"this is not gzip", "is not valid gzip data"),
    ("br", b"\xff\xff not brotli at all", "is not valid br data"),
    ("zstd", b"\x28\xb5\x2f\xfd garbage garbage", "is not valid zstd data"),
    ("zstd", zstd.compress(BODY) + b"trailing junk", "is not valid zstd data"),
    ("compress", b"anything", "has an unsupported content-encoding 'compress'"),
    ("gzip, bogus", gzip.compress(BODY), "has an unsupported content-encoding 'bogus'"),
])
def test_corrupt_or_unknown_is_undecodable_with_a_reason(encoding, raw, detail):
    got = decode_body(raw, encoding)
    assert got.problem == UNDECODABLE and got.data == b""
    assert detail in got.detail


def test_no_body():
    assert decode_body(None, "zstd").data == b"" and decode_body(b"", "gzip").complete


ENCODINGS = st.sampled_from([None, "identity", "gzip", "deflate", "br", "zstd", "gzip, br", "zstd, gzip", "bogus", " , "])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), ENCODINGS, st.integers(min_value=0, max_value=4096))
def test_never_raises_and_never_exceeds_the_cap_on_garbage(raw, encoding, limit):
    got = decode_body(raw, encoding, limit)
    assert got.problem in (None, TOO_LARGE, UNDECODABLE)
    decoded = [n for n in (encoding or "").split(",") if n.strip() not in ("", "identity")]
    if decoded:
        assert len(got.data) <= limit
    else:
        assert got.data == raw and got.complete
    assert got.problem != UNDECODABLE or got.data == b""


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from(sorted(ENCODERS)), st.integers(min_value=0, max_value=5000))
def test_round_trip_within_the_cap_and_prefix_past_it(data, encoding, limit):
    got = decode_body(ENCODERS[encoding](data), encoding, limit)
    if len(data) <= limit:
        assert got.complete and got.data == data
    else:
        assert got.problem == TOO_LARGE and got.data == data[:limit]


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=512), st.sampled_from(sorted(ENCODERS)), st.data())
def test_flipped_bytes_in_a_valid_body_never_raise(data, encoding, draw):
    packed = bytearray(ENCODERS[encoding](data))
    for i in draw.draw(st.lists(st.integers(min_value=0, max_value=len(packed) - 1), max_size=4)):
        packed[i] ^= 0xFF
    got = decode_body(bytes(packed), encoding, 4096)
    assert got.problem in (None, TOO_LARGE, UNDECODABLE) and len(got.data) <= 4096
