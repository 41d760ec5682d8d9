"""The conversation a request belongs to, and the short keyed hash we keep instead of the raw id.

Headers first (Codex sends `session-id` and `thread-id`; older clients `session_id` /
`conversation_id`; OpenCode `x-session-id` / `x-session-affinity`), then the JSON body's
`prompt_cache_key` (for `/v1/chat/completions` the proxy derives one: core/chat_request.py). The body is searched, not parsed,
unless the key appears more than once: bodies carry the whole history and can be megabytes.
Whatever the body holds, the lookup answers a key or None and never raises: a body that is not
JSON, nests deeper than the parser recurses, or is too large to parse has no key (the request is
still forwarded, just not kept to its conversation's account).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping

# Codex's, older clients', then OpenCode's (`x-session-id`, `x-session-affinity`: on every request
# of a session, its title request included)
HEADER_KEYS = ("session-id", "session_id", "thread-id", "conversation_id", "conversation-id",
               "x-session-id", "x-session-affinity")

# Only matches a real key: inside a JSON string a quote is always escaped (\"), so an
# unescaped `"prompt_cache_key"` followed by a colon is a key of some object in the body.
_PROMPT_CACHE_KEY = re.compile(rb'"prompt_cache_key"\s*:\s*"((?:[^"\\]|\\.){1,512})"')
MAX_KEY_LENGTH = 512
# An ambiguous body (the key in nested objects too) is parsed whole to find the top-level one. A
# parse builds Python objects worth several times the text, so only bodies up to this size are
# parsed: a real request never nests another string-valued `prompt_cache_key` (inside its texts the
# quotes are escaped), so past this size ambiguity means a hostile body, which gets no key.
MAX_PARSE_BYTES = 4 * 1024 * 1024


def from_headers(headers: Mapping[str, str]) -> str | None:
    for name in HEADER_KEYS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()[:MAX_KEY_LENGTH]
    return None


def from_body(body: bytes) -> str | None:
    """`prompt_cache_key` of a JSON request body (top level), or None."""
    if b"prompt_cache_key" not in body:
        return None
    matches = _PROMPT_CACHE_KEY.findall(body)
    if len(matches) == 1:
        try:
            value = json.loads(b'"' + matches[0] + b'"')
        except ValueError:
            return None
        return value.strip() or None if isinstance(value, str) else None
    if not matches or len(body) > MAX_PARSE_BYTES:
        return None
    try:  # ambiguous: several objects carry the key; only the top-level one counts
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError), or nested too deep
        return None
    value = doc.get("prompt_cache_key") if isinstance(doc, dict) else None
    return value.strip()[:MAX_KEY_LENGTH] or None if isinstance(value, str) else None


def conversation_key(headers: Mapping[str, str], body: Callable[[], bytes | None]) -> str | None:
    """Headers first; `body()` is only called (and the body only decoded) when they have no key."""
    key = from_headers(headers)
    if key is not None:
        return key
    data = body()
    return from_body(data) if data else None


def hash_key(secret: bytes, key: str) -> str:
    """A short keyed hash of a conversation key: stable for one data dir, not reversible."""
    return hmac.new(secret, key.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]
