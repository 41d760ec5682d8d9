"""mitmweb/mitmproxy content view "Codex stream": renders a Codex SSE answer or WebSocket frame
with stream_view (the Contentview API of mitmproxy >= 12).

Register from the addon's ``load`` with ``contentviews.add(CodexStreamContentview)``: the registry
keys views by ``name.lower()`` and a second ``add`` (hot reload) replaces the first one (logged at
INFO), so no "already registered?" guard is needed (``contentviews.get`` is deprecated in 12).
"""

from __future__ import annotations

from mitmproxy.contentviews import Contentview, Metadata

from codex_pool.core import stream_view


class CodexStreamContentview(Contentview):
    name = "Codex stream"
    syntax_highlight = "none"  # one of css/javascript/xml/yaml/none/error; ours is plain text

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        # mitmproxy hands views decoded content (message.content), so no content-encoding here
        if metadata.content_type and metadata.content_type.startswith("text/event-stream"):
            events = stream_view.events_from_sse(data, None)
        else:
            events = stream_view.events_from_frame(data) or stream_view.events_from_sse(data, None)
        lines = stream_view.render(events)
        if not lines:
            # the 11.x view said "Codex stream (nothing recognised)" in its description; 12.x views
            # have no description, so show the text as it is
            return data.decode("utf-8", "replace")
        return "\n".join(f"{label:>12} {text}" for label, text in lines)

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        if not data:
            return 0
        ct = metadata.content_type  # "type/subtype" without parameters, None for WebSocket messages
        if ct and ct.startswith("text/event-stream") and stream_view.looks_like_codex_stream(data):
            return 2
        if data[:1] == b"{" and stream_view.looks_like_codex_stream(data[:200]):
            return 0.5  # a WebSocket frame of a Codex turn
        return 0


codex_stream = CodexStreamContentview()


class CodexStreamView:
    """Addon part: registers the view from `load`. Safe on hot reload: the registry keys views by
    name, so a second registration replaces the first (mitmproxy logs "Replacing existing codex
    stream contentview." at INFO). The membership test only avoids that log line."""

    def load(self, loader) -> None:
        from mitmproxy import contentviews

        if CodexStreamContentview.name.lower() not in contentviews.registry:
            contentviews.add(codex_stream)
