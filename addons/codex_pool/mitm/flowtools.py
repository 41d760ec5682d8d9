"""Small helpers shared by the addon's hook modules: local answers, redaction, flow facts."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import traceback
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import http

from codex_pool.core.redact import is_client_credential, redact
from codex_pool.core.turn import TurnObserver

log = logging.getLogger("codex_pool")

META = "codex_pool"  # flow.metadata key; holds JSON-friendly values only (flows may be saved)


def answer_local(flow: http.HTTPFlow, status: int, body: bytes, content_type: str = "application/json") -> None:
    flow.response = http.Response.make(status, body, {"content-type": content_type, "cache-control": "no-store"})


MODELS_CACHE_SECONDS = 120.0
WS_KEEP_MESSAGES = 200  # frames kept on a WebSocket flow (for mitmweb); older ones are dropped


@dataclass
class WsTurn:
    """A WebSocket turn in progress."""

    observer: TurnObserver
    started: float
    model: str | None
    first_at: float | None = None


def outcome_of(meta: dict) -> str:
    if meta.get("failover"):
        return "failed_over"
    if meta.get("outcome") == "client_cancelled":
        return "client_cancelled"
    return meta.get("outcome_reason") or "ok"


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def fingerprint(token: str) -> str:
    """A short non-reversible tag telling which access token a request went out with."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def is_upgrade(flow: http.HTTPFlow) -> bool:
    return flow.request.headers.get("upgrade", "").lower() == "websocket"


def drop_client_credentials(headers: http.Headers) -> None:
    for name in {n for n in headers.keys() if is_client_credential(n)}:
        del headers[name]


def redact_request(flow: http.HTTPFlow) -> None:
    """The request has been sent: keep the pool's token out of the stored flow."""
    meta = flow.metadata.get(META)
    if "Authorization" in flow.request.headers and isinstance(meta, dict):
        flow.request.headers["Authorization"] = f"Bearer [redacted: pool account {meta.get('account')}]"


def describe(e: BaseException) -> str:
    return redact("".join(traceback.format_exception(e)).rstrip())


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def load_secret(data_dir: Path) -> bytes:
    """The key for hashing conversation ids, kept in data_dir so hashes are stable across restarts."""
    path = data_dir / "conversation-hash.key"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    key = secrets.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    except OSError as e:
        log.warning("codex-pool: cannot write %s (%s); conversation hashes will change on restart", path, e)
    return key

