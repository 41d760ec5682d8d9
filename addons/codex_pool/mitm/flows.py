"""Small helpers for the addons: local answers, credentials and redaction on a flow."""

from __future__ import annotations

import traceback

from mitmproxy import http

from codex_pool.core.bodies import error_body
from codex_pool.core.redact import is_client_credential, redact

META = "codex_pool"  # flow.metadata key: a JSON-friendly copy of the flow's Exchange, for saved flows


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
    return flow.request.headers.get("upgrade", "").lower() == "websocket"


def drop_client_credentials(headers: http.Headers) -> None:
    for name in {n for n in headers.keys() if is_client_credential(n)}:
        del headers[name]


def redact_pool_token(flow: http.HTTPFlow, account: str) -> None:
    """The request has been sent: keep the pool's token out of the stored flow."""
    if "Authorization" in flow.request.headers:
        flow.request.headers["Authorization"] = f"Bearer [redacted: pool account {account}]"


def describe_error(e: BaseException) -> str:
    """An exception with its traceback, scrubbed of anything that looks like a token."""
    return redact("".join(traceback.format_exception(e)).rstrip())
