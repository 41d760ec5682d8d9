"""The backend's Responses API stream → what an OpenAI-style client asked for. Pure.

- `ResponsesCollector` follows the events of one stream and assembles the final Responses object
  (a `/v1/responses` request without `stream: true`) and the pieces of a chat completion.
- `ChatStream` is a stream callable for `/v1/chat/completions` with `stream: true`: each upstream
  event is turned into `chat.completion.chunk` events as it arrives (nothing is held back: the
  first content chunk leaves with the first upstream delta), tool calls as `tool_calls` deltas, the
  finish reason and, with `stream_options.include_usage`, a usage chunk; then `data: [DONE]`.
- `chat_completion` builds the non-streamed chat answer from a collector.

Usage: `prompt_tokens` = input, `completion_tokens` = output, with `cached_tokens` and
`reasoning_tokens` in the details objects.
"""

from __future__ import annotations

import json
from typing import Any

from codex_pool.core.sse import ContentDecoder, SSEParser

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    inp, out = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": int(usage.get("total_tokens") or inp + out),
            "prompt_tokens_details": {"cached_tokens": int(cached)},
            "completion_tokens_details": {"reasoning_tokens": int(reasoning)}}


def finish_reason(status: str | None, incomplete_reason: str | None, tool_calls: bool) -> str:
    if status == "incomplete":
        return "length" if incomplete_reason in (None, "max_output_tokens") else "content_filter"
    return "tool_calls" if tool_calls else "stop"


class ResponsesCollector:
    """What one Responses stream said, event by event (`feed(type, data)`)."""

    def __init__(self) -> None:
        self.response: dict[str, Any] = {}  # the latest `response` object the stream carried
        self.items: dict[int, dict[str, Any]] = {}  # output_index -> finished item
        self.text: dict[int, list[str]] = {}  # output_index -> text deltas
        self.terminal: str | None = None  # the terminal event's type
        self.error: dict[str, Any] | None = None  # an `error` event, or response.failed's error

    def feed(self, kind: str | None, data: dict[str, Any]) -> None:
        kind = kind or data.get("type")
        if kind in ("response.created", "response.in_progress") or kind in TERMINAL:
            response = data.get("response")
            if isinstance(response, dict):
                self.response = response
            if kind in TERMINAL:
                self.terminal = kind
                if kind == "response.failed":
                    self.error = (response or {}).get("error") or {"message": "the response failed"}
        elif kind == "response.output_text.delta":
            self.text.setdefault(int(data.get("output_index") or 0), []).append(str(data.get("delta", "")))
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            index = data.get("output_index")
            self.items[int(index) if isinstance(index, int) else len(self.items)] = data["item"]
        elif kind == "error":
            self.error = data.get("error") if isinstance(data.get("error"), dict) else data
            self.terminal = self.terminal or "error"

    @property
    def id(self) -> str:
        return str(self.response.get("id") or "resp_unknown")

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.response.get("usage")

    def output(self) -> list[dict[str, Any]]:
        """The finished output items in order (the terminal event's own list when it has one)."""
        given = self.response.get("output")
        if isinstance(given, list) and given:
            return given
        return [self.items[i] for i in sorted(self.items)]

    def response_object(self) -> dict[str, Any]:
        """The final Responses API object, as a non-streaming `POST /v1/responses` answers it."""
        out = dict(self.response)
        out.setdefault("object", "response")
        out["output"] = self.output()
        return out

    def message_text(self) -> str | None:
        texts = []
        for item in self.output():
            if isinstance(item, dict) and item.get("type") == "message":
                texts += [p.get("text", "") for p in item.get("content") or () if isinstance(p, dict)
                          and p.get("type") == "output_text"]
        if not texts and self.text:
            texts = ["".join(self.text[i]) for i in sorted(self.text)]
        return "".join(texts) if texts else None

    def tool_calls(self) -> list[dict[str, Any]]:
        return [{"id": str(item.get("call_id") or item.get("id")), "type": "function",
                 "function": {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))}}
                for item in self.output() if isinstance(item, dict) and item.get("type") == "function_call"]


def chat_completion(collector: ResponsesCollector, model: str, now: float) -> dict[str, Any]:
    """The non-streamed `chat.completion` for a finished stream."""
    calls = collector.tool_calls()
    message: dict[str, Any] = {"role": "assistant", "content": collector.message_text(), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    response = collector.response
    incomplete = (response.get("incomplete_details") or {}).get("reason") if isinstance(response, dict) else None
    return {
        "id": "chatcmpl-" + collector.id.removeprefix("resp_"),
        "object": "chat.completion",
        "created": int(response.get("created_at") or now),
        "model": str(response.get("model") or model),
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(response.get("status"), incomplete, bool(calls))}],
        "usage": chat_usage(collector.usage),
    }


def events_of(body: bytes, content_encoding: str | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    """The JSON events of a whole (buffered) SSE body."""
    decoder = ContentDecoder(content_encoding)
    parser = SSEParser()
    data = decoder.feed(body) + decoder.flush()
    return [parsed for ev in parser.feed(data) + parser.close() if (parsed := _json_event(ev.event, ev.data))]


def _json_event(kind: str | None, data: str) -> tuple[str | None, dict[str, Any]] | None:
    if not data or data == "[DONE]":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return (kind or doc.get("type"), doc) if isinstance(doc, dict) else None


class ChatStream:
    """Stream callable: Responses SSE bytes in, `chat.completion.chunk` SSE bytes out. Never raises;
    if its own code fails it ends the stream with an error event (a half-translated stream would be
    worse)."""

    def __init__(self, model: str, include_usage: bool, now: float, content_encoding: str | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.decoder = ContentDecoder(content_encoding)
        self.parser = SSEParser()
        self.collector = ResponsesCollector()
        self.id = "chatcmpl-pending"
        self.created = int(now)  # until the stream's own created_at arrives
        self.started = False  # the role chunk went out
        self.done = False  # [DONE] (or the error that ends it) went out
        self.tools: dict[int, int] = {}  # output_index -> tool_calls index
        self.arguments: dict[int, str] = {}  # output_index -> arguments sent so far
        self.text_seen: set[int | str] = set()  # output indexes and item ids whose text came as deltas

    def __call__(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        if not chunk:
            # mitmproxy's end-of-body call, or an empty HTTP/2 DATA frame mid-stream (also b""):
            # the two cannot be told apart here, so nothing is ended on it. A stream that ends
            # without a terminal event reaches the client without `[DONE]`, which clients treat as
            # a cut stream (the account is judged by Verdicts either way).
            return b""
        try:
            out: list[bytes] = []
            data = self.decoder.feed(chunk)
            for ev in self.parser.feed(data) if data else ():
                parsed = _json_event(ev.event, ev.data)
                if parsed is not None and not self.done:
                    self._event(parsed[0], parsed[1], out)
            return b"".join(out)
        except Exception as e:  # never drop the stream silently
            out = []
            self._fail(out, f"codex-pool failed translating the stream ({type(e).__name__}); retry", "server_error")
            return b"".join(out)

    # ---- events ----------------------------------------------------------------------------

    def _event(self, kind: str | None, data: dict[str, Any], out: list[bytes]) -> None:
        self.collector.feed(kind, data)
        if kind == "response.created":
            self._start(out)
        elif kind == "response.output_text.delta":
            self.text_seen.add(int(data.get("output_index") or 0))
            if data.get("item_id"):
                self.text_seen.add(str(data["item_id"]))
            self._delta(out, {"content": str(data.get("delta", ""))})
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._delta(out, {"reasoning_content": str(data.get("delta", ""))})
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                self._tool_start(int(data.get("output_index") or 0), item, out)
        elif kind == "response.function_call_arguments.delta":
            index = int(data.get("output_index") or 0)
            if index in self.tools:
                delta = str(data.get("delta", ""))
                self.arguments[index] += delta
                self._tool_delta(index, {"arguments": delta}, out)
        elif kind == "response.output_item.done":
            self._item_done(int(data.get("output_index") or 0), data.get("item") or {}, out)
        elif kind in ("response.completed", "response.incomplete"):
            self._finish(out)
        elif kind in ("response.failed", "error"):
            error = self.collector.error or {}
            self._fail(out, str(error.get("message") or "the response failed"), str(error.get("type") or "server_error"),
                       code=error.get("code"))

    def _item_done(self, index: int, item: dict[str, Any], out: list[bytes]) -> None:
        """Whatever the deltas did not carry (some streams send an item only whole)."""
        if item.get("type") == "function_call":
            if index not in self.tools:
                self._tool_start(index, item, out)
            full, sent = str(item.get("arguments", "")), self.arguments[index]
            if full != sent and full.startswith(sent):
                self.arguments[index] = full
                self._tool_delta(index, {"arguments": full[len(sent):]}, out)
        elif item.get("type") == "message" and index not in self.text_seen and str(item.get("id")) not in self.text_seen:
            text = "".join(p.get("text", "") for p in item.get("content") or ()
                           if isinstance(p, dict) and p.get("type") == "output_text")
            if text:
                self.text_seen.add(index)
                self._delta(out, {"content": text})

    def _tool_start(self, index: int, item: dict[str, Any], out: list[bytes]) -> None:
        self.tools[index] = len(self.tools)
        self.arguments[index] = ""
        self._tool_delta(index, {"name": str(item.get("name", "")), "arguments": ""}, out,
                         call_id=str(item.get("call_id") or item.get("id") or f"call_{index}"))

    def _tool_delta(self, index: int, function: dict[str, str], out: list[bytes], call_id: str | None = None) -> None:
        call: dict[str, Any] = {"index": self.tools[index]}
        if call_id is not None:
            call.update(id=call_id, type="function")
        call["function"] = function
        self._delta(out, {"tool_calls": [call]})

    # ---- chunks ----------------------------------------------------------------------------

    def _start(self, out: list[bytes]) -> None:
        if self.started:
            return
        response = self.collector.response
        self.id = "chatcmpl-" + str(response.get("id") or "resp").removeprefix("resp_")
        self.created = int(response.get("created_at") or self.created)
        self.model = str(response.get("model") or self.model)
        self.started = True
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        self._start(out)
        out.append(self._chunk(delta))

    def _finish(self, out: list[bytes]) -> None:
        self._start(out)
        response = self.collector.response
        incomplete = (response.get("incomplete_details") or {}).get("reason")
        out.append(self._chunk({}, finish_reason(response.get("status"), incomplete, bool(self.tools))))
        if self.include_usage:
            out.append(_sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model, "system_fingerprint": None, "choices": [],
                             "usage": chat_usage(self.collector.usage)}))
        out.append(b"data: [DONE]\n\n")
        self.done = True

    def _fail(self, out: list[bytes], message: str, type_: str, code: Any = None) -> None:
        out.append(_sse({"error": {"message": message, "type": type_, "code": code, "param": None}}))
        self.done = True

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                 "model": self.model, "system_fingerprint": None,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = None
        return _sse(chunk)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def is_backend_event(kind: str | None, data: str) -> bool:
    """The backend's own events (`codex.rate_limits`, ...), which are not part of the Responses API:
    an SDK that validates the event order (openai-python's `responses.stream()`) fails on one that
    arrives before `response.created`."""
    return (kind or "").startswith("codex.") or data.startswith('{"type":"codex.')


class EventFilter:
    """Stream callable: SSE in, the same events out minus those `drop(kind, data)` names, each
    re-written as `event:` / `data:` lines as it completes. Never raises: on its own failure it
    passes the rest on as it came."""

    def __init__(self, drop, content_encoding: str | None = None) -> None:
        self.drop = drop
        self.decoder = ContentDecoder(content_encoding)
        self.parser = SSEParser()
        self.failed = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""  # the end, or an empty HTTP/2 DATA frame (see ChatStream)
        data = self.decoder.feed(chunk)
        if self.failed:
            return data
        try:
            out = []
            for ev in self.parser.feed(data) if data else ():
                if self.drop(ev.event, ev.data):
                    continue
                head = f"event: {ev.event}\n".encode() if ev.event else b""
                body = b"".join(b"data: " + line.encode() + b"\n" for line in ev.data.split("\n"))
                out.append(head + body + b"\n")
            return b"".join(out)
        except Exception:  # what the parser held of earlier chunks is lost with it; the rest goes on
            self.failed = True
            return data
