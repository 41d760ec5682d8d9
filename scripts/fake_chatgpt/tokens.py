"""Dummy ChatGPT tokens: HS256 JWTs signed with a fixed test key, opaque refresh tokens.

Codex never checks the signature, but it rejects a JWT whose signature part is empty, so the
tokens are real HS256 JWTs (three non-empty parts). The claim layout follows what auth.openai.com
issues (`https://api.openai.com/auth`, `https://api.openai.com/profile`, `exp`, `iat`, ...).
"""

from __future__ import annotations

import datetime as _dt
import secrets
import time
from dataclasses import dataclass

import jwt

SIGNING_KEY = "fake-chatgpt-test-signing-key-not-a-secret"
ISSUER = "https://auth.openai.com"
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


@dataclass(frozen=True)
class TokenSet:
    id_token: str
    access_token: str
    refresh_token: str
    access_exp: int
    issued_at: int


def _auth_claims(account_id: str, plan: str, user_id: str) -> dict:
    return {
        "chatgpt_account_id": account_id,
        "chatgpt_plan_type": plan,
        "chatgpt_user_id": user_id,
        "user_id": user_id,
    }


def _encode(claims: dict) -> str:
    return jwt.encode(claims, SIGNING_KEY, algorithm="HS256")


def mint_tokens(
    *,
    email: str,
    account_id: str,
    plan: str,
    user_id: str,
    access_ttl: float,
    now: float | None = None,
) -> TokenSet:
    """Mint a fresh id/access/refresh token triple for one account."""
    iat = int(now if now is not None else time.time())
    exp = iat + int(access_ttl)
    auth = _auth_claims(account_id, plan, user_id)
    id_claims = {
        "iss": ISSUER,
        "aud": [CODEX_CLIENT_ID],
        "sub": user_id,
        "email": email,
        "email_verified": True,
        "auth_provider": "password",
        "iat": iat,
        "exp": exp,
        "jti": secrets.token_hex(8),
        PROFILE_CLAIM: {"email": email, "email_verified": True},
        AUTH_CLAIM: auth,
    }
    access_claims = {
        "iss": ISSUER,
        "aud": ["https://api.openai.com/v1"],
        "client_id": CODEX_CLIENT_ID,
        "sub": user_id,
        "scp": ["openid", "profile", "email", "offline_access"],
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": secrets.token_hex(8),
        "session_id": "authsess_" + secrets.token_hex(8),
        PROFILE_CLAIM: {"email": email, "email_verified": True},
        AUTH_CLAIM: auth,
    }
    return TokenSet(
        id_token=_encode(id_claims),
        access_token=_encode(access_claims),
        refresh_token="rt_" + secrets.token_urlsafe(32),
        access_exp=exp,
        issued_at=iat,
    )


def rfc3339(ts: float) -> str:
    return (
        _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def auth_json(tokens: TokenSet, account_id: str) -> dict:
    """The auth.json document Codex reads (chatgpt mode)."""
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": tokens.id_token,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "account_id": account_id,
        },
        "last_refresh": rfc3339(tokens.issued_at),
    }


def decode_unverified(token: str) -> dict:
    """Claims of a JWT without checking anything (helper for tests and tools)."""
    return jwt.decode(token, options={"verify_signature": False, "verify_exp": False, "verify_aud": False})
