"""Request bodies decoded with a cap: what routing (the conversation key) and the ledger (the model)
read of a body the client compressed.

mitmproxy's own `get_content()` decodes a `Content-Encoding` whole, with no limit, and keeps the
last result in a module-level cache: a 13 KB zstd body that expands to 400 MB cost the proxy 400 MB
of memory, kept until the next decode. :func:`decode_body` undoes identity, gzip/x-gzip, deflate
(zlib-wrapped or raw), br and zstd (several frames or members, and comma lists such as
``"gzip, br"``, undone last-applied first) a piece at a time, and stops once the output passes the
cap. It never raises: the result says whether the body was decoded whole, was too large, or could
not be decoded.

What the proxy does with a body it could not decode whole (the rule lives in mitm/routing.py,
which reads only `DecodedBody.complete`): it forwards the request untouched, without a conversation
key. The body is the client's and upstream's business; the proxy only looks into it for a
stickiness hint (Codex sends its conversation in headers anyway), so refusing a request a proxy
merely failed to read would turn a missing nicety into an outage, and upstream is the one that
decides what it accepts (it answers a broken body 400 itself, which does not count against the
account). The proxy's cost stays bounded either way.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import brotli

from codex_pool.core import zstd

# 16 MiB: a Codex request body is the conversation in JSON text — a full 400k-token context is
# about 1.6 MB — so ten times that still leaves room for inline images, while a bomb costs at most
# this much (about twice it, briefly, while the pieces are joined) instead of whatever it expands to.
MAX_DECODED_BYTES = 16 * 1024 * 1024

TOO_LARGE = "too_large"
UNDECODABLE = "undecodable"

_GZIP_WBITS = 47  # zlib's 32 + 15: a gzip (or zlib) header, told apart by zlib itself


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """One request body after :func:`decode_body`.

    ``data`` is the whole decoded body when ``problem`` is None. When the body is too large it is
    the first ``limit`` bytes (enough for a look at its beginning, e.g. the ledger's `model`); when
    it cannot be decoded it is empty (never half-decoded garbage)."""

    data: bytes
    problem: str | None = None  # None | TOO_LARGE | UNDECODABLE
    detail: str = ""  # why, to follow "the request body …" in a log line

    @property
    def complete(self) -> bool:
        return self.problem is None


def decode_body(raw: bytes | None, encoding: str | None, limit: int = MAX_DECODED_BYTES) -> DecodedBody:
    """`raw` with its `Content-Encoding` undone, at most `limit` bytes of output; never raises.

    An identity body is returned as is, however long: it is already in memory and decoding it costs
    nothing, so the cap (which bounds the work of decompressing) does not apply to it.
    """
    try:
        return _decode(raw or b"", encoding, max(0, limit))
    except Exception as e:  # a decoder's own failure: still an answer, never an exception
        return DecodedBody(b"", UNDECODABLE, f"could not be decoded ({type(e).__name__})")


def _decode(raw: bytes, encoding: str | None, limit: int) -> DecodedBody:
    names = [n.strip().lower() for n in (encoding or "").split(",")]
    stages = [n for n in reversed(names) if n and n != "identity"]
    for name in stages:
        if name not in _STAGES:
            return DecodedBody(b"", UNDECODABLE, f"has an unsupported content-encoding {name[:40]!r}")
    if not stages or not raw:
        return DecodedBody(raw)
    data, problem, detail = raw, None, ""
    for name in stages:
        try:
            data, ended = _STAGES[name](data, limit)
        except Exception as e:  # corrupt data: zlib.error, brotli.error, ZstdError, ...
            if problem is not None:  # a prefix of an outer stage's output: it is too large all the same
                return DecodedBody(b"", problem, detail)
            return DecodedBody(b"", UNDECODABLE, f"is not valid {name} data ({type(e).__name__}: {str(e)[:80]})")
        if len(data) > limit:
            # the rest is a prefix: what follows only has to decode as far as it goes
            data, problem = data[:limit], TOO_LARGE
            detail = f"decodes to more than {_size(limit)}"
        elif not ended and problem is None:
            return DecodedBody(b"", UNDECODABLE, f"ends before its {name} stream does")
    return DecodedBody(data, problem, detail)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 and n % (1024 * 1024) == 0 else f"{n} bytes"


# Each stage decodes all of `data` into at most `limit` + 1 bytes (brotli may overshoot by a block:
# its limit only stops the buffer growing) and says whether the compressed stream ended. More than
# `limit` bytes back means "too large"; the caller cuts it. The loops end: every turn either
# produces output (bounded by the limit) or consumes input, or the stage stops.


def _inflate(data: bytes, wbits: int | None, limit: int) -> tuple[bytes, bool]:
    """gzip (several members, one after the other), zlib-wrapped deflate or raw deflate."""
    if wbits is None:  # "deflate": zlib-wrapped by the RFC, raw by many servers; the header tells
        is_zlib = len(data) >= 2 and (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
        wbits = 15 if is_zlib else -15
    out: list[bytes] = []
    size = 0
    d = zlib.decompressobj(wbits)
    while True:
        given = len(data)
        piece = d.decompress(data, limit + 1 - size)
        out.append(piece)
        size += len(piece)
        if size > limit:
            return b"".join(out), True
        if d.eof:
            data = d.unused_data
            if not data or wbits != _GZIP_WBITS:  # after a deflate stream: nothing more to read
                return b"".join(out), True
            d = zlib.decompressobj(wbits)  # the next gzip member
            continue
        data = d.unconsumed_tail
        if not piece and (not data or len(data) == given):  # nothing more comes out: the stream was cut
            return b"".join(out), False


def _unbrotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    d = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    piece = d.process(data, output_buffer_limit=limit + 1)
    while True:
        out.append(piece)
        size += len(piece)
        if size > limit or d.is_finished():
            return b"".join(out), d.is_finished()
        if d.can_accept_more_data():  # all input taken and drained, yet not finished: cut short
            return b"".join(out), False
        piece = d.process(b"", output_buffer_limit=limit + 1 - size)
        if not piece and not d.is_finished() and not d.can_accept_more_data():
            return b"".join(out), False  # no progress (never expected): stop rather than spin


def _unzstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    """Every frame, one after the other (skippable frames yield nothing)."""
    out: list[bytes] = []
    size = 0
    d = zstd.ZstdDecompressor()
    while True:
        piece = d.decompress(data, max_length=limit + 1 - size)
        data = b""
        out.append(piece)
        size += len(piece)
        if size > limit:
            return b"".join(out), True
        if d.eof:
            data = d.unused_data
            if not data:
                return b"".join(out), True
            d = zstd.ZstdDecompressor()  # the next frame
        elif d.needs_input:  # all input taken, the frame not ended
            return b"".join(out), False
        elif not piece:
            return b"".join(out), False  # no progress (never expected): stop rather than spin


_STAGES = {
    "gzip": lambda data, limit: _inflate(data, _GZIP_WBITS, limit),
    "x-gzip": lambda data, limit: _inflate(data, _GZIP_WBITS, limit),
    "deflate": lambda data, limit: _inflate(data, None, limit),
    "br": _unbrotli,
    "zstd": _unzstd,
}
