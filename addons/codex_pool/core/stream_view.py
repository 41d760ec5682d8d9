"""A Codex SSE stream or WebSocket turn, rendered for reading: the assistant's text, tool calls,
reasoning summary, usage, rate limits and errors instead of hundreds of delta events. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from codex_pool.core.sse import ContentDecoder, SSEParser

MAX_LINE = 400


def looks_like_codex_stream(data: bytes) -> bool:
    head = data[:4096]
    return b"response.created" in head or b"codex.rate_limits" in head or b'"type":"response.' in head \
        or b'"type": "response.' in head


def events_from_sse(data: bytes, content_encoding: str | None = None) -> list[dict]:
    decoder = ContentDecoder(content_encoding)
    parser = SSEParser()
    raw = decoder.feed(data) + decoder.flush()
    out = []
    for event in parser.feed(raw) + parser.close():
        try:
            obj = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def events_from_frame(data: bytes) -> list[dict]:
    try:
        obj = json.loads(data)
    except ValueError:
        return []
    return [obj] if isinstance(obj, dict) else []


def render(events: list[dict]) -> list[tuple[str, str]]:
    """(label, text) lines: what a person wants to see of a turn."""
    lines: list[tuple[str, str]] = []
    text: dict[str, list[str]] = {}
    reasoning: list[str] = []
    calls: dict[str, dict[str, Any]] = {}
    deltas = 0
    for e in events:
        t = e.get("type", "")
        if t == "response.created":
            r = e.get("response") or {}
            lines.append(("response", f"{r.get('id', '?')} model={r.get('model', '?')}"))
        elif t == "response.output_text.delta":
            deltas += 1
            text.setdefault(str(e.get("item_id", "")), []).append(str(e.get("delta", "")))
        elif t in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            reasoning.append(str(e.get("delta", "")))
        elif t == "response.output_item.done":
            item = e.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call", "local_shell_call"):
                calls[item.get("call_id") or item.get("id") or str(len(calls))] = item
            elif item.get("type") == "message" and not text.get(str(item.get("id", ""))):
                parts = [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
                if any(parts):
                    text[str(item.get("id", ""))] = parts
            elif item.get("type") == "reasoning" and not reasoning:
                reasoning += [s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)]
        elif t == "response.create":
            lines.append(("request", f"response.create model={e.get('model', '?')}"
                                     + (" (prewarm)" if e.get("generate") is False else "")
                                     + (f" previous={e['previous_response_id']}" if e.get("previous_response_id") else "")))
        elif t == "codex.rate_limits":
            rl = e.get("rate_limits") or {}
            parts = []
            for which in ("primary", "secondary"):
                w = rl.get(which)
                if isinstance(w, dict):
                    parts.append(f"{which} {w.get('used_percent')}% of {w.get('window_minutes')} min, resets {w.get('reset_at')}")
            lines.append(("rate limits", "; ".join(parts) or json.dumps(rl)[:MAX_LINE]))
        elif t == "response.completed":
            u = (e.get("response") or {}).get("usage") or {}
            cached = (u.get("input_tokens_details") or {}).get("cached_tokens", 0)
            reasoning_tokens = (u.get("output_tokens_details") or {}).get("reasoning_tokens", 0)
            lines.append(("usage", f"input {u.get('input_tokens')} (cached {cached}), output {u.get('output_tokens')} "
                                   f"(reasoning {reasoning_tokens}), total {u.get('total_tokens')}"))
            lines.append(("status", "completed"))
        elif t == "response.failed":
            err = (e.get("response") or {}).get("error") or {}
            lines.append(("status", f"FAILED {err.get('code')}: {err.get('message')}"))
        elif t == "response.incomplete":
            why = ((e.get("response") or {}).get("incomplete_details") or {}).get("reason")
            lines.append(("status", f"incomplete: {why}"))
        elif t == "error":
            lines.append(("error", f"status {e.get('status')}: {json.dumps(e.get('error'))[:MAX_LINE]}"))
    body: list[tuple[str, str]] = []
    if reasoning:
        body.append(("reasoning", "".join(reasoning)[:MAX_LINE * 4]))
    for chunks in text.values():
        for i, line in enumerate("".join(chunks).splitlines() or [""]):
            body.append(("text" if i == 0 else "", line))
    for item in calls.values():
        args = item.get("arguments") or item.get("input") or json.dumps(item.get("action") or {})
        body.append(("tool call", f"{item.get('name', item.get('type'))}({str(args)[:MAX_LINE]})"))
    if deltas:
        body.append(("", f"({deltas} text delta events)"))
    head = [line for line in lines if line[0] in ("request", "response")]
    tail = [line for line in lines if line[0] not in ("request", "response")]
    return head + body + tail
