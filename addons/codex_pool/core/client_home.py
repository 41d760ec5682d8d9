"""What a client's CODEX_HOME needs to talk to the proxy instead of holding a real login.

The placeholder auth.json carries well-formed but meaningless tokens whose expiry lies far in the
future, so Codex never tries to refresh them against the real auth server; the proxy replaces
them with a pool account's credentials on every request.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import jwt

PLACEHOLDER_ACCOUNT_ID = "codex-pool-client"
NEVER_DUE = "2100-01-01T00:00:00Z"  # the last_refresh of a placeholder carrying a client key
_FAR_FUTURE = 4102444800  # 2100-01-01
_KEY = "codex-pool-placeholder-not-a-secret-0000"


def placeholder_client_auth(now: float, key: str | None = None) -> dict[str, Any]:
    """The placeholder login of a client's CODEX_HOME; with a client `key` (a shared pool), the key is
    its access token, so Codex sends it as `Authorization: Bearer <key>` on every request."""
    now = int(now)
    auth = {"chatgpt_account_id": PLACEHOLDER_ACCOUNT_ID, "chatgpt_plan_type": "pro", "chatgpt_user_id": "codex-pool-client"}
    claims = {"iat": now, "exp": _FAR_FUTURE, "email": "client@codex-pool.invalid",
              "https://api.openai.com/auth": auth, "https://api.openai.com/profile": {"email": "client@codex-pool.invalid"}}
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": jwt.encode(claims, _KEY, algorithm="HS256"),
            "access_token": key or jwt.encode({**claims, "scp": ["placeholder"]}, _KEY, algorithm="HS256"),
            "refresh_token": "codex-pool-placeholder-refresh-token",
            "account_id": PLACEHOLDER_ACCOUNT_ID,
        },
        # a key is no JWT, so Codex would refresh it 8 days after `last_refresh` (its rule for tokens
        # without `exp`), and a refresh answer would have to carry the key: never due instead
        "last_refresh": NEVER_DUE if key else datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
