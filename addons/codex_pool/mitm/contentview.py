"""mitmweb/mitmproxy content view "Codex stream": renders a Codex SSE answer or WebSocket frame
with stream_view (the old View API of mitmproxy 11.0.2)."""

from __future__ import annotations

from mitmproxy.contentviews import base

from codex_pool.core import stream_view


class ViewCodexStream(base.View):
    name = "Codex stream"

    def __call__(self, data: bytes, *, content_type: str | None = None, http_message=None, **metadata):
        encoding = None  # mitmproxy hands views decoded content
        if content_type and content_type.startswith("text/event-stream"):
            events = stream_view.events_from_sse(data, encoding)
        else:
            events = stream_view.events_from_frame(data) or stream_view.events_from_sse(data, encoding)
        lines = stream_view.render(events)
        if not lines:
            return "Codex stream (nothing recognised)", base.format_text(data.decode("utf-8", "replace"))
        return "Codex stream", iter([[("header", f"{label:>12} "), ("text", text)] for label, text in lines])

    def render_priority(self, data: bytes, *, content_type: str | None = None, **metadata) -> float:
        if not data:
            return 0
        if content_type and content_type.startswith("text/event-stream") and stream_view.looks_like_codex_stream(data):
            return 2
        if data[:1] == b"{" and stream_view.looks_like_codex_stream(data[:200]):
            return 0.5  # a WebSocket frame of a Codex turn
        return 0
