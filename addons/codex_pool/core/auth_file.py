"""One Codex auth.json: parsed into an `Account`, or rejected with a reason a person can act on.

Identity comes from the id_token's claims (the signature is not verified: Codex never checks it
either); expiry from the access token's `exp`. Token keys may be snake_case (Codex) or camelCase
(some other tools); the form is remembered so a later write-back keeps it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt

AUTH_CLAIMS = "https://api.openai.com/auth"
PROFILE_CLAIMS = "https://api.openai.com/profile"

# The JSON key of each field inside "tokens", by key style (Codex writes snake_case).
TOKEN_KEY_NAMES = {
    "snake": {"id_token": "id_token", "access_token": "access_token", "refresh_token": "refresh_token", "account_id": "account_id"},
    "camel": {"id_token": "idToken", "access_token": "accessToken", "refresh_token": "refreshToken", "account_id": "accountId"},
}
_FIX = "replace it with the auth.json written by `codex login` (ChatGPT sign-in)"
# An auth.json is a few KB (three JWTs and a date). Every reader stops here: 1 MiB is hundreds of
# times a real one, so nothing real is refused, while a file swapped for a log, a disk image or a
# bomb costs at most this much to read and parse.
MAX_AUTH_FILE_BYTES = 1 << 20


class AuthFileError(ValueError):
    """Why a pool file cannot be used; the message ends with what to do."""


@dataclass(frozen=True)
class Account:
    """One pool account as read from its file. Tokens are kept out of repr()."""

    name: str
    path: Path
    account_id: str
    email: str | None
    plan: str | None
    access_expires_at: float | None
    last_refresh: datetime | None
    key_style: str  # "snake" | "camel"
    access_token: str = dataclasses.field(repr=False)
    id_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False, default=None)
    access_issued_at: float | None = None  # the access token's `iat`

    def expired(self, now: float) -> bool:
        return self.access_expires_at is not None and self.access_expires_at <= now

    def token_lifetime(self) -> float | None:
        """Seconds the access token was issued for (`exp` − `iat`, else `exp` − `last_refresh`)."""
        if self.access_expires_at is None:
            return None
        issued = self.access_issued_at if self.access_issued_at is not None else (
            self.last_refresh.timestamp() if self.last_refresh is not None else None)
        if issued is None or issued >= self.access_expires_at:
            return None
        return self.access_expires_at - issued


def decode_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified. Raises AuthFileError when it is not a JWT."""
    try:
        claims = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except Exception as e:  # PyJWTError, and what odd input raises beneath it (a token that is not
        # UTF-8-encodable, a payload nested deeper than the JSON parser recurses, ...)
        raise AuthFileError(f"undecodable JWT ({e.__class__.__name__})") from None
    if not isinstance(claims, dict):
        raise AuthFileError("JWT payload is not an object")
    return claims


def detect_key_style(tokens: dict[str, Any]) -> str:
    """"camel" when a "tokens" object uses more camelCase keys than snake_case ones, else "snake"."""
    camel = sum(1 for k in TOKEN_KEY_NAMES["camel"].values() if k in tokens)
    snake = sum(1 for k in TOKEN_KEY_NAMES["snake"].values() if k in tokens)
    return "camel" if camel > snake else "snake"


def _token(tokens: dict[str, Any], style: str, field: str) -> str | None:
    value = tokens.get(TOKEN_KEY_NAMES[style][field])
    if value is None:  # tolerate a file that mixes forms
        other = "camel" if style == "snake" else "snake"
        value = tokens.get(TOKEN_KEY_NAMES[other][field])
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AuthFileError(f"tokens.{TOKEN_KEY_NAMES[style][field]} is not a non-empty string; {_FIX}")
    return value.strip()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _time_claim(value: Any) -> float | None:
    """A JWT time claim in seconds, or None (JSON allows integers too large for a float, and the
    parser reads `Infinity` and `NaN`: none of them is a time)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _str_claim(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_auth(data: bytes, path: Path) -> Account:
    """Parse the bytes of one pool file. Raises AuthFileError with a reason and the fix, and nothing
    else whatever the bytes are."""
    if len(data) > MAX_AUTH_FILE_BYTES:
        raise AuthFileError(f"{len(data)} bytes, too large for an auth.json (at most {MAX_AUTH_FILE_BYTES}); "
                            f"{_FIX}")
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise AuthFileError(f"not UTF-8 text; {_FIX}") from None
    except json.JSONDecodeError as e:
        raise AuthFileError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {_FIX}") from None
    except RecursionError:
        raise AuthFileError(f"not an auth.json (JSON nested too deep to read); {_FIX}") from None
    if not isinstance(doc, dict):
        raise AuthFileError(f"not a JSON object; {_FIX}")
    tokens = doc.get("tokens")
    if tokens is None:
        if doc.get("OPENAI_API_KEY") or doc.get("openaiApiKey"):
            raise AuthFileError("holds an API key, not a ChatGPT sign-in; the pool needs `codex login` with a ChatGPT account")
        raise AuthFileError(f"no \"tokens\" object; {_FIX}")
    if not isinstance(tokens, dict):
        raise AuthFileError(f"\"tokens\" is not an object; {_FIX}")
    style = detect_key_style(tokens)
    keys = TOKEN_KEY_NAMES[style]
    access = _token(tokens, style, "access_token")
    id_token = _token(tokens, style, "id_token")
    refresh = _token(tokens, style, "refresh_token")
    missing = [keys[f] for f, v in (("access_token", access), ("id_token", id_token)) if v is None]
    if missing:
        raise AuthFileError(f"tokens.{' and tokens.'.join(missing)} missing; {_FIX}")
    assert access is not None and id_token is not None
    try:
        id_claims = decode_claims(id_token)
    except AuthFileError as e:
        raise AuthFileError(f"tokens.{keys['id_token']}: {e}; {_FIX}") from None
    try:
        access_claims = decode_claims(access)
    except AuthFileError as e:
        raise AuthFileError(f"tokens.{keys['access_token']}: {e}; {_FIX}") from None

    auth = id_claims.get(AUTH_CLAIMS) if isinstance(id_claims.get(AUTH_CLAIMS), dict) else {}
    profile = id_claims.get(PROFILE_CLAIMS) if isinstance(id_claims.get(PROFILE_CLAIMS), dict) else {}
    account_id = _token(tokens, style, "account_id") or _str_claim(auth.get("chatgpt_account_id"))
    if not account_id:
        raise AuthFileError(
            f"no account id (neither tokens.{keys['account_id']} nor chatgpt_account_id in the id_token); {_FIX}"
        )
    expires_at, issued_at = _time_claim(access_claims.get("exp")), _time_claim(access_claims.get("iat"))
    return Account(
        name=path.stem,
        path=path,
        account_id=account_id,
        email=_str_claim(id_claims.get("email")) or _str_claim(profile.get("email")),
        plan=_str_claim(auth.get("chatgpt_plan_type")),
        access_expires_at=expires_at,
        last_refresh=_parse_time(doc.get("last_refresh", doc.get("lastRefresh"))),
        key_style=style,
        access_token=access,
        id_token=id_token,
        refresh_token=refresh,
        access_issued_at=issued_at,
    )
