"""Zstandard for Python 3.12-3.14: the standard library's `compression.zstd` (3.14+), else its
backport `backports.zstd` (which mitmproxy 12.3 itself installs below 3.14)."""

from __future__ import annotations

try:
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports import zstd as _zstd  # type: ignore[no-redef]

ZstdCompressor = _zstd.ZstdCompressor
ZstdDecompressor = _zstd.ZstdDecompressor


def compress(data: bytes) -> bytes:
    return _zstd.compress(data)


def decompress(data: bytes) -> bytes:
    """Every frame of `data`, concatenated."""
    return _zstd.decompress(data)


class StreamDecoder:
    """Incremental decoding across frame boundaries (a stream may hold several frames)."""

    def __init__(self) -> None:
        self._d = ZstdDecompressor()

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._d.eof:
                self._d = ZstdDecompressor()
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out)
