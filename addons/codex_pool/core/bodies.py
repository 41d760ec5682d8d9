"""The JSON bodies of answers the proxy gives itself (errors and endpoints)."""

from __future__ import annotations

import json
from typing import Any


def error_body(type_: str, code: str, message: str, **extra: Any) -> bytes:
    """`{"error": {"type", "code", "message", ...}}` — the shape Codex and the OpenAI SDK read."""
    return json_body({"error": {"type": type_, "code": code, "message": message, **extra}})


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, ensure_ascii=False).encode() + b"\n"
