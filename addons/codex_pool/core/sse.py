"""Watching a streamed SSE answer without touching it.

- :class:`ContentDecoder` undoes ``Content-Encoding`` incrementally (the stream tap sees the
  bytes as sent upstream).
- :class:`SSEParser` turns bytes into :class:`SSEEvent` following the WHATWG event-stream
  rules, with bounded memory.
- :class:`SSETap` is the callable for mitmproxy's ``flow.response.stream``: it returns every
  chunk unchanged and feeds the parsed events to a :class:`~codex_pool.turn.TurnObserver`.

Pure Python, no mitmproxy imports.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Callable, Protocol

import brotli

from codex_pool.core import zstd
from codex_pool.core.turn import TurnObserver

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
DEFAULT_BATCH_BYTES = 64 * 1024  # parse a stream's chunks this many bytes at a time

_LINE_END = re.compile(rb"\r\n|\r|\n")
# A blank line, then a whole `event: <type>.delta` + single `data:` line event (after optional
# comment lines) ended by a blank line: the deltas `_simple_block` would count, removed and
# counted in one C call (`subn`) when only their number is wanted.
_DELTA_EVENTS = re.compile(rb"\n\n(?::[^\n]*\n)*event: [^\n:]*\.delta\ndata: [^\n]*(?=\n\n)")


class _Stage(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _ZlibStage:
    """gzip (possibly multi-member), zlib-wrapped deflate or raw deflate."""

    def __init__(self, wbits: int | None) -> None:
        # wbits None: "deflate" — sniff zlib header vs raw deflate from the first 2 bytes.
        self._wbits = wbits
        self._head = b""
        self._d = zlib.decompressobj(wbits) if wbits is not None else None

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            is_zlib = (b0 & 0x0F) == 8 and (b0 << 8 | b1) % 31 == 0
            self._wbits = 15 if is_zlib else -15
            self._d = zlib.decompressobj(self._wbits)
            data, self._head = self._head, b""
        out = self._d.decompress(data)
        # A gzip body may hold several members; start over on what follows the first.
        while self._d.eof and self._d.unused_data and self._wbits == 47:
            rest = self._d.unused_data
            self._d = zlib.decompressobj(47)
            out += self._d.decompress(rest)
        return out

    def flush(self) -> bytes:
        if self._d is None:  # fewer than 2 bytes ever arrived: nothing to decode
            return b""
        return self._d.flush()


class _BrotliStage:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        return self._d.process(data)

    def flush(self) -> bytes:
        return b""


class _ZstdStage:
    def __init__(self) -> None:
        self._d = zstd.StreamDecoder()

    def feed(self, data: bytes) -> bytes:
        return self._d.feed(data)

    def flush(self) -> bytes:
        return b""


def _stage(name: str) -> _Stage:
    if name in ("gzip", "x-gzip"):
        return _ZlibStage(47)
    if name == "deflate":
        return _ZlibStage(None)
    if name == "br":
        return _BrotliStage()
    if name == "zstd":
        return _ZstdStage()
    raise ValueError(name)


class ContentDecoder:
    """Incremental ``Content-Encoding`` decoder that never raises.

    Supports identity (also None or ""), gzip, x-gzip, deflate (zlib-wrapped or raw), br,
    zstd, and comma lists such as ``"gzip, br"`` (undone in reverse order). An unknown
    encoding or corrupt input sets :attr:`error` and from then on every call returns b"".
    """

    def __init__(self, encoding: str | None) -> None:
        self.encoding = encoding
        self.error: str | None = None
        self._stages: list[_Stage] = []
        names = [n.strip().lower() for n in (encoding or "").split(",")]
        for name in reversed([n for n in names if n and n != "identity"]):
            try:
                self._stages.append(_stage(name))
            except ValueError:
                self.error = f"unsupported content-encoding: {name[:40]}"
                self._stages = []
                return


    def feed(self, data: bytes) -> bytes:
        """Decode the next piece of the body."""
        if self.error is not None:
            return b""
        if not self._stages:
            return data
        try:
            for stage in self._stages:
                data = stage.feed(data)
            return data
        except Exception as e:
            self.error = f"decode failed: {type(e).__name__}: {str(e)[:80]}"
            return b""

    def flush(self) -> bytes:
        """Decode whatever the decoders still hold at the end of the body."""
        if self.error is not None or not self._stages:
            return b""
        try:
            out = b""
            for stage in self._stages:
                out = stage.feed(out) if out else b""
                out += stage.flush()
            return out
        except Exception as e:
            self.error = f"decode failed: {type(e).__name__}: {str(e)[:80]}"
            return b""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event; ``id`` is the last event id seen (WHATWG)."""

    event: str | None
    data: str
    id: str | None


class SSEParser:
    """Incremental WHATWG ``text/event-stream`` parser over bytes.

    Lines end in LF, CRLF or CR (also when the CR and LF arrive in different chunks). Lines
    are decoded as UTF-8 only once complete, so split characters are fine; invalid bytes
    become U+FFFD. An event bigger than ``max_event_bytes`` is dropped (``overflows``) and
    the rest of it skipped up to the next blank line. At :meth:`close` an unterminated
    trailing event is dropped and counted in ``truncated``.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, *, count_deltas: bool = False) -> None:
        self.max_event_bytes = max_event_bytes
        # count_deltas: whole `*.delta` events are counted in `deltas_counted` instead of returned
        # (a tap needs only their number; a viewer wants their text)
        self.count_deltas = count_deltas
        self.deltas_counted = 0
        self.overflows = 0
        self.truncated = 0
        self._pending = bytearray()  # the current, not yet terminated line
        self._cr_end = False  # the last chunk ended in CR: drop one leading LF
        self._skipping = False  # inside an oversize event, waiting for a blank line
        self._first_line = True
        self._event: str | None = None
        self._data: list[bytes] = []  # raw data-line values, decoded at dispatch
        self._id: str | None = None
        self._event_bytes = 0
        self._has_fields = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse the next chunk; returns the events it completed."""
        if self._first_line and not self._pending and len(data) >= 3:  # a leading BOM: here or in _line
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            self._first_line = False
        if (not self._pending and not self._has_fields and not self._skipping and not self._cr_end
                and not self._first_line and b"\r" not in data):
            # Between events, LF-only: whole events are cut at blank lines, and the common
            # `event: …` + one `data:` line is taken without walking its lines.
            if self.count_deltas and len(data) <= self.max_event_bytes:  # (so no event here can overflow)
                # a leading blank line changes nothing between events and lets the first one match
                rest, counted = _DELTA_EVENTS.subn(b"", b"\n\n" + data)
                if counted:
                    self.deltas_counted += counted
                    data = rest[2:]
                    if not data:
                        return []
            blocks = data.split(b"\n\n")
            if len(blocks) > 1:
                out: list[SSEEvent] = []
                line = self._line
                for block in blocks[:-1]:
                    if not self._simple_block(block, out):
                        for raw in block.split(b"\n"):
                            line(raw, out)
                        line(b"", out)
                if blocks[-1]:
                    out += self._feed_lines(blocks[-1])
                return out
        return self._feed_lines(data)

    def _simple_block(self, block: bytes, out: list[SSEEvent]) -> bool:
        """One whole `event: <type>` / `data: …` event (one line each, the shape of every Codex
        event), taken at once — a delta only counted when counting; False for anything else."""
        while block[:1] == b":":  # comment lines (keep-alives, stamps) carry nothing
            nl = block.find(b"\n")
            if nl < 0:
                return False
            block = block[nl + 1:]
        if not block.startswith(b"event: ") or len(block) > self.max_event_bytes:
            return False
        nl = block.find(b"\n")
        if nl < 0 or not block.startswith(b"data: ", nl + 1) or block.find(b"\n", nl + 1) >= 0:
            return False
        name = block[7:nl]
        if not name or b":" in name:
            return False
        if self.count_deltas and name.endswith(b".delta"):
            self.deltas_counted += 1
            return True
        out.append(SSEEvent(name.decode("utf-8", "replace"), block[nl + 7:].decode("utf-8", "replace"), self._id))
        return True

    def _feed_lines(self, data: bytes) -> list[SSEEvent]:
        if self._cr_end and data:
            self._cr_end = False
            if data[0] == 0x0A:
                data = data[1:]
        if not data:
            return []
        if b"\r" in data:
            parts = _LINE_END.split(data)
            self._cr_end = data[-1] == 0x0D
        else:
            parts = data.split(b"\n")
        out: list[SSEEvent] = []
        if len(parts) > 1:
            first = parts[0]
            if self._pending:
                self._pending += first
                first = bytes(self._pending)
                self._pending = bytearray()
            self._line(first, out)
            line = self._line
            for raw in parts[1:-1]:
                line(raw, out)
        self._pending += parts[-1]
        if self._pending:
            if self._skipping:
                del self._pending[1:]  # only "is the line empty" matters while skipping
            elif self._event_bytes + len(self._pending) > self.max_event_bytes:
                self._overflow()
                self._pending = bytearray(b"x")
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream. Events are dispatched at their blank line, so an event still
        pending here is unterminated: it is dropped and counted in ``truncated``."""
        pending_line = bytes(self._pending)
        if not self._skipping and (
            self._has_fields or (pending_line and not pending_line.startswith(b":"))
        ):
            self.truncated += 1
        self._pending = bytearray()
        self._cr_end = False
        self._skipping = False
        self._reset_event()
        return []

    def _reset_event(self) -> None:
        self._event = None
        self._data = []
        self._event_bytes = 0
        self._has_fields = False

    def _overflow(self) -> None:
        self.overflows += 1
        self._reset_event()
        self._skipping = True

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        """Process one complete line (without its terminator).

        Works on bytes: field names are ASCII and UTF-8 never hides ':' or a line end inside
        a multi-byte character, so values are decoded only when used.
        """
        if not raw:
            self._first_line = False
            if self._skipping:
                self._skipping = False
            elif self._data:
                data = self._data
                text = data[0] if len(data) == 1 else b"\n".join(data)
                out.append(SSEEvent(self._event, text.decode("utf-8", "replace"), self._id))
            self._reset_event()
            return
        if self._skipping:
            return
        self._event_bytes += len(raw)
        if self._event_bytes > self.max_event_bytes:
            self._overflow()
            return
        if self._first_line:
            self._first_line = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
                if not raw:
                    return
        if raw[0] == 0x3A:  # ":" comment
            return
        field, colon, value = raw.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace") or None
        elif field == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace") or None
        else:
            return  # "retry" and unknown fields are ignored
        self._has_fields = True


class SSETap:
    """The callable for ``flow.response.stream``: passes every chunk through unchanged and
    parses a copy into events for a :class:`TurnObserver`.

    Chunks are parsed in batches (every ``batch_bytes``, at the end of the stream, or when
    :meth:`drain` is called before the observer is read): per chunk the tap only counts and
    queues, since nothing reads the events before the stream ends and a parse of many events
    at once is several times cheaper than one per chunk.

    It never raises: a failure is recorded in :attr:`error` and parsing stops, while bytes
    keep flowing. The final ``b""`` call marks the end of the stream.

    Its work is bounded whatever upstream sends: an event (or a line that never ends) longer than
    ``max_event_bytes`` is skipped, not buffered, and the bytes go on untouched. Whenever part of
    the stream could not be read — such an event, an encoding it cannot undo, its own failure —
    the observer is told (:meth:`TurnObserver.mark_unparsed`: ``event_too_large``, ``undecodable``,
    ``tap_failed``), so a turn whose end the tap never saw is recorded as unparsed rather than
    blamed on the account as an incomplete stream.
    """

    def __init__(
        self,
        content_encoding: str | None,
        observer: TurnObserver | None,
        clock: Callable[[], float],
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        keep_bytes: int = 0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        self.decoder = ContentDecoder(content_encoding)
        self.keep_bytes = keep_bytes  # keep a copy of the first N raw bytes (for flow inspection)
        self.kept = bytearray()
        self.parser = SSEParser(max_event_bytes, count_deltas=observer is not None)
        self._deltas_seen = 0
        self.batch_bytes = batch_bytes
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self.observer = observer
        self.clock = clock
        self.first_byte_at: float | None = None
        self.bytes_seen = 0
        self.ended = False  # the last call was the b"" one (the end, unless more data follows)
        self.closed = False  # drain() closed the parser: the stream is over
        self.events = 0
        self.error: str | None = None
        # what the client receives instead of the upstream bytes (a translation, e.g. into chat
        # chunks: core/answer_translate.py); None passes them on untouched. It must never raise.
        self.transform: Callable[[bytes], bytes] | None = None
        self.transform_error: str | None = None

    def __call__(self, chunk: bytes) -> bytes | tuple[()]:
        out = self._tap(chunk)
        transform = self.transform
        if transform is None:
            return out
        try:
            # nothing to send yet is (), never b"": mitmproxy sends an empty chunk, which ends a
            # chunked body for the client (proxy/layers/http/__init__.py, state_stream_response_body)
            return transform(out) or ()
        except Exception as e:  # a transform must not raise; if one does, the bytes go on as they came
            self.transform = None
            self.transform_error = f"{type(e).__name__}: {str(e)[:100]}"
            return out or ()

    def _tap(self, chunk: bytes) -> bytes:
        try:
            if chunk:
                # data after an empty chunk: that was an empty HTTP/2 DATA frame, not the end
                self.ended = False
                self.bytes_seen += len(chunk)
                if self.first_byte_at is None:
                    self.first_byte_at = self.clock()
                if self.error is None and not self.closed:
                    self._queued.append(chunk)  # kept and parsed a batch at a time
                    self._queued_bytes += len(chunk)
                    if self._queued_bytes >= self.batch_bytes:
                        self._parse_queued()
                elif len(self.kept) < self.keep_bytes:
                    self.kept += chunk[: self.keep_bytes - len(self.kept)]
            elif not self.ended:
                # mitmproxy's call at the end of the body, or an empty DATA frame mid-stream (which
                # it passes on as b"" too): parse what is queued; `drain` closes the parser
                self.ended = True
                if self.error is None and not self.closed:
                    self._parse_queued()
        except Exception as e:  # a raising stream callable would drop the chunk
            self.error = f"{type(e).__name__}: {str(e)[:120]}"
            self._note_unparsed()
        return chunk

    def drain(self) -> None:
        """The stream is over (the response or error hook): parse what is queued, undo the rest of
        the content encoding, close the parser (an unterminated last event is dropped). Idempotent."""
        try:
            if self.error is None and not self.closed:
                self.closed = True
                self._parse_queued()
                tail = self.decoder.flush()
                if tail:
                    self._dispatch(self.parser.feed(tail))
                self._dispatch(self.parser.close())
        except Exception as e:
            self.error = f"{type(e).__name__}: {str(e)[:120]}"
        self._note_unparsed()

    def _note_unparsed(self) -> None:
        """Tell the observer when part of the stream could not be read (never raises)."""
        observer = self.observer
        if observer is None or observer.unparsed is not None:
            return
        try:
            if self.error is not None:
                observer.mark_unparsed("tap_failed")
            elif self.decoder.error is not None:
                observer.mark_unparsed("undecodable")
            elif self.parser.overflows:
                observer.mark_unparsed("event_too_large")
        except Exception:  # an observer that fails here has nothing more to learn
            pass

    def _parse_queued(self) -> None:
        if not self._queued:
            return
        data = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued = []
        self._queued_bytes = 0
        if len(self.kept) < self.keep_bytes:
            self.kept += data[: self.keep_bytes - len(self.kept)]
        decoded = self.decoder.feed(data)
        if decoded:
            self._dispatch(self.parser.feed(decoded))
        if self.parser.overflows or self.decoder.error is not None:
            self._note_unparsed()

    def _dispatch(self, events: list[SSEEvent]) -> None:
        observer = self.observer
        counted = self.parser.deltas_counted - self._deltas_seen
        if counted:
            self._deltas_seen += counted
            self.events += counted
            if observer is not None:
                observer.count_deltas(counted)
        self.events += len(events)
        if observer is None:
            return
        for ev in events:
            observer.observe_json(ev.data, ev.event)
