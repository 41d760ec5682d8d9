"""Small helpers for the addons: local answers, credentials and redaction on a flow."""

from __future__ import annotations

import traceback

from mitmproxy import http

from codex_pool.core.bodies import error_body
from codex_pool.core.redact import CANNOT_BE_CREDENTIAL, is_client_credential, redact

META = "codex_pool"  # flow.metadata key: a JSON-friendly copy of the flow's Exchange, for saved flows
CLIENT = "codex_pool.client"  # flow.metadata key: what an OpenAI-style client asked for (mitm/openai_compat.py)
KEY = "codex_pool.key"  # flow.metadata key: the name of the client key the request came with (mitm/client_auth.py)


def answer(flow: http.HTTPFlow, status: int, body: bytes, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> None:
    """Answer the client locally; nothing goes upstream."""
    flow.response = http.Response.make(status, body, {"content-type": content_type, "cache-control": "no-store",
                                                      **(headers or {})})


def answer_error(flow: http.HTTPFlow, status: int, type_: str, code: str, message: str,
                 retry_after: int | None = None, **extra) -> None:
    answer(flow, status, error_body(type_, code, message, **extra),
           headers={"retry-after": str(retry_after)} if retry_after is not None else None)


def is_upgrade(flow: http.HTTPFlow) -> bool:
    """A WebSocket upgrade (Codex's native wiring opens one for its turns)."""
    return flow.request.headers.get("upgrade", "").lower() == "websocket"


def drop_client_credentials(headers: http.Headers, add: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Remove every header a client may carry its identity in, then append `add`: one pass over the
    raw fields and at most one rebuild (mitmproxy's per-name delete rescans every field)."""
    fields = headers.fields
    kept = tuple(f for f in fields if f[0][:1] in CANNOT_BE_CREDENTIAL or not is_client_credential(f[0]))
    if add or len(kept) != len(fields):
        headers.fields = kept + add





def lower_headers(headers: http.Headers, wanted: frozenset[bytes]) -> dict[str, str]:
    """The `wanted` headers (lower-case names) by lower-case name, the first of repeated ones, from
    one pass over the raw fields; only those are decoded."""
    out: dict[str, str] = {}
    for name, value in headers.fields:
        lower = name.lower()
        if lower in wanted:
            out.setdefault(lower.decode("latin-1"), value.decode("latin-1"))
    return out


def answer_headers(headers: http.Headers) -> tuple[str, dict[str, str]]:
    """An answer's content type (lower case, "" when none) and its `x-codex-*` headers by
    lower-case name, from one pass over the raw fields (a per-name lookup scans every field)."""
    content_type = None
    codex = {}
    for name, value in headers.fields:
        lower = name.lower()
        if lower[:8] == b"x-codex-":
            codex[lower.decode("latin-1")] = value.decode("latin-1")
        elif content_type is None and lower == b"content-type":
            content_type = value.decode("latin-1").lower()
    return content_type or "", codex


def redact_pool_token(flow: http.HTTPFlow, account: str) -> None:
    """The request has been sent: keep the pool's token out of the stored flow."""
    headers = flow.request.headers
    fields = headers.fields
    for i, (name, _) in enumerate(fields):
        if name.lower() == b"authorization":
            headers.fields = fields[:i] + ((name, f"Bearer [redacted: pool account {account}]".encode()),) + fields[i + 1:]
            return


def describe_error(e: BaseException) -> str:
    """An exception with its traceback, scrubbed of anything that looks like a token."""
    return redact("".join(traceback.format_exception(e)).rstrip())
