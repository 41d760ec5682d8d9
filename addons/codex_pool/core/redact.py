"""Scrubbing secrets out of text before it is logged or shown."""

from __future__ import annotations

import hashlib
import re

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")
_REFRESH = re.compile(r"\brt_[A-Za-z0-9_.-]{8,}")
_KEYED = re.compile(r"(?i)((?:access|refresh|id)_?token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+")
_CLIENT_KEY = re.compile(r"\bcp-[A-Za-z0-9_-]{40,}")  # a codex-pool client key (core/client_keys.py)


_MAYBE = re.compile(r"(?i)eyJ|bearer|rt_|token|cp-")  # every pattern below needs one of these


def redact(text: str) -> str:
    """Replace anything that looks like a token with a marker."""
    if not _MAYBE.search(text):
        return text  # the common case: one scan instead of four substitutions
    text = _JWT.sub("[redacted-jwt]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _REFRESH.sub("[redacted-refresh-token]", text)
    text = _KEYED.sub(r"\1[redacted]", text)
    return _CLIENT_KEY.sub("[redacted-client-key]", text)


# a client's own identity: ChatGPT's, and the API-key headers OpenAI-style SDKs send (Azure's
# `api-key`, `x-api-key`, the organisation and project of an OpenAI key)
CLIENT_CREDENTIAL_HEADERS = frozenset({"authorization", "chatgpt-account-id", "cookie", "proxy-authorization",
                                       "api-key", "x-api-key", "openai-organization", "openai-project"})
# Raw header names that cannot be a credential, told by their first byte: an ASCII letter none of
# the credential names starts with (either case). Anything else gets the full check.
CANNOT_BE_CREDENTIAL = frozenset(
    bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if chr(c).lower() not in {name[0] for name in CLIENT_CREDENTIAL_HEADERS}
)


def is_client_credential(header_name: str | bytes) -> bool:
    """Headers a client may use to carry its own identity; none of them may reach upstream.
    Takes the raw (bytes) name too, so a hook need not decode every header."""
    if isinstance(header_name, bytes):
        header_name = header_name.decode("latin-1")
    return header_name.strip().lower().replace("_", "-") in CLIENT_CREDENTIAL_HEADERS


def fingerprint(token: str | None) -> str | None:
    """A short non-reversible tag telling which token is meant (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else None
