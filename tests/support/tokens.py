"""Test credentials: dummy HS256 JWTs shaped like ChatGPT's (never real tokens)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt

KEY = "codex-pool-tests-only-not-a-real-signing-key"


def make_jwt(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, KEY, algorithm="HS256")


def make_auth(
    account_id: str = "acct-1",
    email: str | None = "one@example.com",
    plan: str = "plus",
    exp: float | None = None,
    style: str = "snake",
    refresh_token: str | None = "rt_test_refresh_token_1",  # None: a file without one
    include_account_id: bool = True,
    iat: float | None = None,
) -> dict[str, Any]:
    now = int(time.time())
    issued = now if iat is None else iat
    exp = now + 864000 if exp is None else exp
    auth_claims = {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan, "chatgpt_user_id": "user-" + account_id}
    id_claims: dict[str, Any] = {"iat": now, "exp": now + 3600, "https://api.openai.com/auth": auth_claims}
    if email:
        id_claims["email"] = email
    access_claims = {"iat": issued, "exp": exp, "https://api.openai.com/auth": auth_claims, "n": account_id}
    tokens = {
        "id_token": make_jwt(id_claims),
        "access_token": make_jwt(access_claims),
        "refresh_token": refresh_token,
    }
    if refresh_token is None:
        del tokens["refresh_token"]
    if include_account_id:
        tokens["account_id"] = account_id
    if style == "camel":
        tokens = {
            {"id_token": "idToken", "access_token": "accessToken", "refresh_token": "refreshToken", "account_id": "accountId"}[k]: v
            for k, v in tokens.items()
        }
    return {"auth_mode": "chatgpt", "OPENAI_API_KEY": None, "tokens": tokens, "last_refresh": "2026-11-20T09:00:00Z"}


def write_auth(folder: Path, name: str, doc: dict[str, Any] | str | bytes) -> Path:
    path = folder / f"{name}.json"
    if isinstance(doc, dict):
        path.write_text(json.dumps(doc))
    elif isinstance(doc, str):
        path.write_text(doc)
    else:
        path.write_bytes(doc)
    path.chmod(0o600)
    return path
