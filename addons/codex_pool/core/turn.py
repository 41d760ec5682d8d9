"""What one model turn said about itself: response id, usage, outcome and rate limits.

A Codex turn answers with a sequence of JSON events, either as SSE ``data:`` lines
(POST /codex/responses) or as WebSocket text frames (same JSON). :class:`TurnObserver`
reads those events one at a time and keeps only the few facts the pool needs; it never
raises and never keeps the high-volume ``*.delta`` events.

Pure Python, no mitmproxy imports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: How many ``codex.rate_limits`` events a :class:`TurnObserver` keeps (newest last).
MAX_RATE_LIMIT_EVENTS = 8

# `{"type":"response.output_text.delta"` — tolerant of whitespace, anchored at the start.
_DELTA_PREFIX = re.compile(r'\{\s*"type"\s*:\s*"[^"\\]*\.delta"')


def _count(value: object) -> int | None:
    """A non-negative int token count, or None (bool is not a count)."""
    if type(value) is int and value >= 0:
        return value
    return None


def _detail(obj: dict[str, Any], details_key: str, key: str) -> int:
    """A count inside an optional ``*_details`` object; 0 when absent or invalid."""
    details = obj.get(details_key)
    if not isinstance(details, dict):
        return 0
    return _count(details.get(key)) or 0


@dataclass(frozen=True)
class Usage:
    """Token usage of one completed turn, flattened from a Responses ``usage`` object."""

    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int

    @classmethod
    def from_response_usage(cls, obj: object) -> Usage | None:
        """Parse ``{input_tokens, input_tokens_details:{cached_tokens}, output_tokens,
        output_tokens_details:{reasoning_tokens}, total_tokens}``.

        Details are optional (0 when missing); ``total_tokens`` defaults to
        input + output when missing. Returns None when ``obj`` is not a dict or when
        input/output/total are present but not non-negative ints.
        """
        if not isinstance(obj, dict):
            return None
        input_tokens = _count(obj.get("input_tokens"))
        output_tokens = _count(obj.get("output_tokens"))
        if input_tokens is None or output_tokens is None:
            return None
        if "total_tokens" in obj:
            total_tokens = _count(obj["total_tokens"])
            if total_tokens is None:
                return None
        else:
            total_tokens = input_tokens + output_tokens
        return cls(
            input_tokens=input_tokens,
            cached_input_tokens=_detail(obj, "input_tokens_details", "cached_tokens"),
            output_tokens=output_tokens,
            reasoning_tokens=_detail(obj, "output_tokens_details", "reasoning_tokens"),
            total_tokens=total_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """The five counts as a plain dict (by hand: asdict deep-copies, once per turn)."""
        return {"input_tokens": self.input_tokens, "cached_input_tokens": self.cached_input_tokens,
                "output_tokens": self.output_tokens, "reasoning_tokens": self.reasoning_tokens,
                "total_tokens": self.total_tokens}


# the `response.*` events a turn's facts come from (id, model, usage, how it ended)
RESPONSE_KINDS = frozenset({"response.created", "response.in_progress", "response.completed", "response.failed",
                            "response.incomplete"})


def is_delta_event(data: str | bytes, event_type: str | None = None) -> bool:
    """True if an event is a high-volume ``*.delta`` event not worth JSON-decoding.

    ``event_type`` is the SSE ``event:`` field when there is one; otherwise the start of
    the JSON text is checked for ``{"type":"<...>.delta"``.
    """
    if event_type:
        return event_type.endswith(".delta")
    if isinstance(data, bytes):
        # Only the start matters; a UTF-8 split inside those bytes just fails the match.
        data = data[:200].decode("utf-8", "replace")
    return data[:1] == "{" and _DELTA_PREFIX.match(data) is not None


class TurnObserver:
    """Running state of ONE model turn, fed its JSON events in order.

    Feed decoded events with :meth:`observe`, or raw JSON text (an SSE ``data:`` value or a
    WebSocket text frame) with :meth:`observe_json`, which skips decoding delta events.
    Neither method raises.
    """

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.completed: bool = False
        #: ``response.error`` of a ``response.failed`` event, ``{}`` if it had none.
        self.failed: dict[str, Any] | None = None
        #: True once ``response.incomplete`` was seen (its reason may still be None).
        self.incomplete: bool = False
        self.incomplete_reason: str | None = None
        #: ``codex.rate_limits`` events as received, newest last, at most 8.
        self.rate_limits: list[dict[str, Any]] = []
        #: A WebSocket error frame ``{"type":"error","status":429,"error":{...}}``, whole.
        self.error: dict[str, Any] | None = None
        #: Events seen (dicts and skipped deltas); ``garbled`` counts the rest.
        self.events: int = 0
        self.deltas: int = 0
        self.garbled: int = 0
        #: Why part of the stream could not be read (see :meth:`mark_unparsed`), or None.
        self.unparsed: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the turn ended: completed, failed, incomplete or an error frame."""
        return self.completed or self.failed is not None or self.incomplete or self.error is not None

    @property
    def latest_rate_limits(self) -> dict[str, Any] | None:
        """The newest ``codex.rate_limits`` event, or None."""
        return self.rate_limits[-1] if self.rate_limits else None

    def mark_unparsed(self, reason: str) -> None:
        """The tap could not read all of the stream (an event past its size cap, an encoding it
        cannot undo, its own failure), though every byte still reached the client. A turn that then
        never shows its end is not the account's failure — what it said is unknown, not missing —
        and is recorded as such (outcome.stream_verdict, ledger.record_outcome). The first reason is kept."""
        if self.unparsed is None:
            self.unparsed = reason

    def count_deltas(self, n: int) -> None:
        """`n` delta events seen without their text (a tap counts them; nothing in them is kept)."""
        self.events += n
        self.deltas += n

    def observe_json(self, data: str | bytes, event_type: str | None = None) -> None:
        """Observe one event given as JSON text; ``event_type`` is the SSE ``event:`` field.

        Delta events are counted without decoding, ``[DONE]`` is ignored, invalid JSON is
        counted as garbled; the rest goes to :meth:`observe`.
        """
        try:
            if is_delta_event(data, event_type):
                self.events += 1
                self.deltas += 1
                return
            if event_type is not None and event_type.startswith("response.") and event_type not in RESPONSE_KINDS:
                # output items, content parts, text/reasoning `.done`...: nothing here reads them, and
                # the SSE `event:` field names the event's own type (the backend writes both alike)
                self.events += 1
                return
            if data == "[DONE]" or data == b"[DONE]":
                return
            obj = json.loads(data)
        except Exception:  # ValueError, RecursionError, odd input types
            self.garbled += 1
            return
        self.observe(obj, event_type)

    def observe(self, event: object, event_type: str | None = None) -> None:
        """Observe one decoded event; anything that is not a dict counts as garbled.

        ``event_type`` (the SSE ``event:`` field) stands in when the event has no ``type``.
        """
        try:
            self._observe(event, event_type)
        except Exception:  # never raise into the caller's stream
            self.garbled += 1

    def _observe(self, event: object, fallback_type: str | None) -> None:
        if not isinstance(event, dict):
            self.garbled += 1
            return
        self.events += 1
        kind = event.get("type", fallback_type)
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta"):
            self.deltas += 1
            return
        if kind.startswith("response."):
            self._response_event(kind, event.get("response"))
        elif kind == "codex.rate_limits":
            self.rate_limits.append(event)
            if len(self.rate_limits) > MAX_RATE_LIMIT_EVENTS:
                del self.rate_limits[0]
        elif kind == "error":
            self.error = event

    def _response_event(self, kind: str, response: object) -> None:
        """Handle ``response.created/in_progress/completed/failed/incomplete``."""
        if not isinstance(response, dict):
            response = {}
        if kind in RESPONSE_KINDS:
            response_id = response.get("id")
            if isinstance(response_id, str):
                self.response_id = response_id
            model = response.get("model")
            if isinstance(model, str):
                self.model = model
        if kind == "response.completed":
            self.completed = True
            self.usage = Usage.from_response_usage(response.get("usage"))
        elif kind == "response.failed":
            error = response.get("error")
            self.failed = error if isinstance(error, dict) else {}
        elif kind == "response.incomplete":
            self.incomplete = True
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.incomplete_reason = reason if isinstance(reason, str) else None

    def summary(self) -> dict[str, Any]:
        """The observed facts as a JSON-friendly dict (with `unparsed` only when the stream could not
        be read whole)."""
        facts = {
            "response_id": self.response_id,
            "model": self.model,
            "completed": self.completed,
            "failed": self.failed,
            "incomplete": self.incomplete,
            "incomplete_reason": self.incomplete_reason,
            "error": self.error,
            "terminal": self.terminal,
            "usage": self.usage.to_dict() if self.usage else None,
            "rate_limits": self.latest_rate_limits,
            "events": self.events,
            "deltas": self.deltas,
            "garbled": self.garbled,
        }
        if self.unparsed is not None:
            facts["unparsed"] = self.unparsed
        return facts
