"""Which request paths the proxy answers itself, and which it forwards with pool credentials."""

from __future__ import annotations

HEALTH = "/healthz"
METRICS = "/metrics"
ACCOUNTS_CHECK = "/backend-api/wham/accounts/check"  # Codex's workspace routing: answered by the proxy
TOKEN = "/oauth/token"  # a client's own refresh, when its token URL points here: answered by the proxy
MODELS = "/backend-api/codex/models"
USAGE = "/backend-api/wham/usage"  # a client's quota view (Codex's /status): the pool's figures, answered by the proxy
ADMIN_PREFIX = "/admin/"
FORWARD_PREFIX = "/backend-api/"  # everything Codex and OpenAI-style clients call lives here


def bare(path: str) -> str:
    return path.split("?", 1)[0]


def is_local(path: str) -> bool:
    """Answered by the proxy itself, never forwarded."""
    p = bare(path)
    return p in (HEALTH, METRICS, "/admin", ACCOUNTS_CHECK, TOKEN, USAGE) or p.startswith(ADMIN_PREFIX)


def is_forwardable(path: str) -> bool:
    """Only the ChatGPT backend API goes upstream with a pool account's credentials; web pages and
    anything else on the upstream host stay out of reach."""
    p = bare(path)
    return p.startswith(FORWARD_PREFIX) and p not in (ACCOUNTS_CHECK, USAGE)


KEYLESS = frozenset({HEALTH, METRICS, TOKEN, ACCOUNTS_CHECK})  # with client keys on, these need none


def needs_key(path: str) -> bool:
    """With client keys on, a request here needs a valid key: everything but the health check, the
    admin views and metrics (the admin token guards those), a client's own token refresh and Codex's
    workspace routing."""
    p = bare(path)
    return not (p in KEYLESS or p == "/admin" or p.startswith(ADMIN_PREFIX))
