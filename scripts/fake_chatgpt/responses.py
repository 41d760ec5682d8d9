"""Pure functions: what a model turn answers, and the Responses-API events that carry it.

The same event list is written as SSE (`event: <type>\\ndata: <json>\\n\\n`) over HTTP and as
JSON text frames over WebSocket.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from . import schemas

TOOL_MARKER = "RUN_TOOL"
DEFAULT_TOOL_COMMAND = "echo tool-ok"


@dataclass
class TurnPlan:
    kind: str  # "text" | "tool" | "compaction"
    text: str = ""
    tool_item: dict | None = None
    extra: dict = field(default_factory=dict)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- reading the request


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "\n".join(parts)


def latest_user_text(input_items: list) -> str | None:
    for item in reversed(input_items):
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user":
            return _content_text(item.get("content"))
    return None


def _output_text(output) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, dict):  # older shape {"content": "...", "success": true}
        return str(output.get("content", output))
    if isinstance(output, list):
        return _content_text(output)
    return json.dumps(output)


def _marker_rest(user_text: str) -> str | None:
    """The first line after `RUN_TOOL:`, stripped, or None when there is no `RUN_TOOL:`."""
    idx = user_text.find(TOOL_MARKER + ":")
    if idx < 0:
        return None
    lines = user_text[idx + len(TOOL_MARKER) + 1 :].strip().splitlines()
    return lines[0].strip() if lines else ""


def tool_command(user_text: str) -> str:
    """`RUN_TOOL` alone runs `echo tool-ok`; `RUN_TOOL: <command>` runs that command."""
    rest = _marker_rest(user_text)
    return rest if rest else DEFAULT_TOOL_COMMAND


SHELL_TOOL_NAMES = ("exec_command", "shell_command", "shell", "local_shell")
# Codex's shell tools' arguments, for when the request gives no schema for them
CLASSIC_SHELL_ARGS = {
    "exec_command": lambda c: {"cmd": c},
    "shell_command": lambda c: {"command": c},
    "shell": lambda c: {"command": ["bash", "-lc", c]},
}
# a function tool whose name has one of these words (split on non-letters) is taken for a shell
SHELLISH_WORDS = {"bash", "sh", "zsh", "shell", "terminal", "cmd", "command", "commands", "powershell", "pwsh",
                  "exec", "execute"}
# the property of a shell-ish tool that gets the command (first one present; else the first string one)
COMMAND_PROPERTIES = ("command", "cmd", "commands", "script", "code", "input")
TOOL_STRING = "tool-ok"  # what generated tool arguments put into other string properties


def offered_tools(tools) -> dict[str, dict]:
    """Callable tools by name, in request order: flat function tools and `local_shell`."""
    out: dict[str, dict] = {}
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "local_shell":
            out.setdefault("local_shell", tool)
        elif tool.get("type") == "function" and isinstance(tool.get("name"), str):
            out.setdefault(tool["name"], tool)
    return out


def _shellish(name: str) -> bool:
    return any(w in SHELLISH_WORDS for w in re.split(r"[^a-z0-9]+", name.lower()) if w)


def _schema_of(tool: dict) -> dict:
    params = tool.get("parameters")
    return params if isinstance(params, dict) else {"type": "object", "properties": {}}


def _shellish_arguments(tool: dict, command: str) -> dict:
    """Arguments for a shell-like function tool (e.g. OpenCode's `bash {command, description}`):
    the command in its command property, the rest generated from the schema."""
    schema = _schema_of(tool)
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    target = next((p for p in COMMAND_PROPERTIES if p in props), None)
    if target is None:
        required = [r for r in schema.get("required", []) or [] if isinstance(r, str)]
        strings = [p for p in [*required, *props] if isinstance(props.get(p), dict)
                   and "string" in schemas._types(props[p])]
        target = strings[0] if strings else None
    if target is None:
        return schemas.example(schema, string=TOOL_STRING) or {}
    prop = schemas._resolve(props[target], schema)
    kinds = schemas._types(prop) if isinstance(prop, dict) else []
    value: Any = ["bash", "-lc", command] if "array" in kinds and "string" not in kinds else command
    return schemas.example(schema, string=TOOL_STRING, overrides={target: value}) or {target: value}


def tool_call_item(tools, user_text: str) -> dict:
    """The call a `RUN_TOOL` turn answers with. `RUN_TOOL:<name> [command]` names an offered tool;
    otherwise the request's shell tool (exec_command {cmd}, shell_command {command}, shell
    {command:[…]}, local_shell), else the first function tool whose name suggests a shell (command
    in its command property), else the first function tool (arguments from its JSON schema). No
    function tool at all: `exec_command`, Codex 0.169.0's name."""
    names = offered_tools(tools)
    rest = _marker_rest(user_text)
    chosen = None
    command = DEFAULT_TOOL_COMMAND
    if rest:
        first, _, tail = rest.partition(" ")
        if first in names:
            chosen, command = first, tail.strip() or DEFAULT_TOOL_COMMAND
        else:
            command = rest
    if chosen is None:
        chosen = next((n for n in SHELL_TOOL_NAMES if n in names), None)
    if chosen is None:
        chosen = next((n for n in names if _shellish(n)), None)
    if chosen is None:
        chosen = next(iter(names), None)
    call_id = new_id("call")
    if chosen is None:
        return _function_call("exec_command", {"cmd": command}, call_id)
    if chosen == "local_shell":
        return {
            "type": "local_shell_call",
            "id": new_id("lsh"),
            "call_id": call_id,
            "status": "completed",
            "action": {"type": "exec", "command": ["bash", "-lc", command]},
        }
    tool = names[chosen]
    if chosen in CLASSIC_SHELL_ARGS and not (_schema_of(tool).get("properties") or {}):
        return _function_call(chosen, CLASSIC_SHELL_ARGS[chosen](command), call_id)  # no schema to follow
    if chosen in SHELL_TOOL_NAMES or _shellish(chosen):
        return _function_call(chosen, _shellish_arguments(tool, command), call_id)
    args = schemas.example(_schema_of(tool), string=TOOL_STRING)
    return _function_call(chosen, args if isinstance(args, dict) else {}, call_id)


def shell_call_item(tools, command: str) -> dict:
    """A call of the request's shell tool running `command` (kept for callers of the old API)."""
    return tool_call_item(tools, f"{TOOL_MARKER}: {command}")


def _function_call(name: str, args: dict, call_id: str) -> dict:
    return {
        "type": "function_call",
        "id": new_id("fc"),
        "status": "completed",
        "name": name,
        "arguments": json.dumps(args),
        "call_id": call_id,
    }


def structured_text(body: dict, text: str) -> str:
    """`text.format` json_schema: JSON valid against the schema (strings "fake", numbers 1, one
    array item, enums their first value, required properties); json_object: `{"message": text}`.
    Anything else: `text` unchanged."""
    fmt = body.get("text", {}).get("format") if isinstance(body.get("text"), dict) else None
    if not isinstance(fmt, dict):
        return text
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return json.dumps(schemas.example(fmt["schema"], string="fake"))
    if fmt.get("type") == "json_object":
        return json.dumps({"message": text})
    return text


def plan_turn(body: dict, account_name: str) -> TurnPlan:
    """Decide the answer of one model request (pure)."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        items = []
    last = items[-1] if items and isinstance(items[-1], dict) else {}
    last_type = last.get("type")
    greeting = f"Answer from fake account {account_name}."
    if last_type in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
        output = _output_text(last.get("output", "")).strip()
        if len(output) > 600:
            output = output[:600] + "..."
        return TurnPlan("text", structured_text(body, f"{greeting} Tool output: {output}"))
    if last_type in ("compaction_trigger",):
        return TurnPlan("compaction")
    user_text = latest_user_text(items) or ""
    if TOOL_MARKER in user_text:
        return TurnPlan("tool", tool_item=tool_call_item(body.get("tools"), user_text))
    return TurnPlan("text", structured_text(body, greeting))


def compaction_item(account_name: str) -> dict:
    blob = base64.b64encode(
        json.dumps({"fake_compaction": True, "account": account_name, "at": int(time.time())}).encode()
    ).decode()
    return {"type": "compaction", "encrypted_content": blob}


def compact_output(body: dict, account_name: str) -> dict:
    """Answer of POST /codex/responses/compact: the user messages kept, plus a compaction item."""
    items = body.get("input") if isinstance(body.get("input"), list) else []
    kept = [
        i
        for i in items
        if isinstance(i, dict) and i.get("type", "message") == "message" and i.get("role") == "user"
    ]
    return {"output": kept + [compaction_item(account_name)]}


# --------------------------------------------------------------------------- usage


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def make_usage(input_tokens: int, cached_tokens: int, text_tokens: int, reasoning_tokens: int) -> dict:
    output_tokens = text_tokens + reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


# --------------------------------------------------------------------------- events


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text) or 1))
    size = ceil_div(len(text), n) if text else 0
    parts = [text[i : i + size] for i in range(0, len(text), size)] if size else [""]
    return parts


def _response_obj(resp_id: str, model: str, status: str, created_at: int, output, usage, extra=None) -> dict:
    obj = {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "store": False,
        "usage": usage,
        "error": None,
        "incomplete_details": None,
    }
    if extra:
        obj.update(extra)
    return obj


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict:
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else [],
    }


def turn_events(
    *,
    resp_id: str,
    model: str,
    plan: TurnPlan | None,
    usage: dict,
    rate_limits_event: dict | None,
    deltas: int,
    account_name: str = "",
) -> list[dict]:
    """Full event sequence of a completed answer. `plan=None` = prewarm (no output)."""
    created_at = int(time.time())
    ev: list[dict] = [
        {"type": "response.created", "response": _response_obj(resp_id, model, "in_progress", created_at, [], None)},
        {"type": "response.in_progress", "response": _response_obj(resp_id, model, "in_progress", created_at, [], None)},
    ]
    output: list[dict] = []
    if plan is not None and plan.kind == "text":
        item_id = new_id("msg")
        ev.append(
            {"type": "response.output_item.added", "output_index": 0, "item": message_item("", item_id, "in_progress")}
        )
        part = {"type": "output_text", "text": "", "annotations": []}
        ev.append(
            {"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0, "part": part}
        )
        for chunk in _split(plan.text, deltas):
            ev.append(
                {
                    "type": "response.output_text.delta",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": chunk,
                }
            )
        ev.append(
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": plan.text,
            }
        )
        ev.append(
            {
                "type": "response.content_part.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": plan.text},
            }
        )
        item = message_item(plan.text, item_id)
        ev.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        output.append(item)
    elif plan is not None and plan.kind == "tool":
        item = plan.tool_item
        if item["type"] == "function_call":
            ev.append(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {**item, "status": "in_progress", "arguments": ""},
                }
            )
            ev.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "delta": item["arguments"],
                }
            )
            ev.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": 0,
                    "arguments": item["arguments"],
                }
            )
        else:
            ev.append({"type": "response.output_item.added", "output_index": 0, "item": item})
        ev.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        output.append(item)
    elif plan is not None and plan.kind == "compaction":
        item = compaction_item(account_name)
        ev.append({"type": "response.output_item.added", "output_index": 0, "item": item})
        ev.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        output.append(item)
    if rate_limits_event is not None:
        ev.append(rate_limits_event)
    ev.append(
        {"type": "response.completed", "response": _response_obj(resp_id, model, "completed", created_at, output, usage)}
    )
    for i, e in enumerate(ev):
        e.setdefault("sequence_number", i)
    return ev


def failed_events(*, resp_id: str, model: str, code: str, message: str) -> list[dict]:
    created_at = int(time.time())
    error = {"code": code, "message": message}
    ev = [
        {"type": "response.created", "response": _response_obj(resp_id, model, "in_progress", created_at, [], None)},
        {
            "type": "response.failed",
            "response": _response_obj(resp_id, model, "failed", created_at, [], None, {"error": error}),
        },
    ]
    for i, e in enumerate(ev):
        e["sequence_number"] = i
    return ev


def output_tokens_of(plan: TurnPlan | None) -> int:
    if plan is None:
        return 0
    if plan.kind == "text":
        return max(1, ceil_div(len(plan.text), 4))
    if plan.kind == "tool":
        return max(1, ceil_div(len(json.dumps(plan.tool_item)), 4))
    return 16


def sse_encode(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
