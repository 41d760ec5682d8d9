"""Simulated backend state: accounts, tokens, quota figures, faults, configuration, request log.

Everything here is plain data plus small synchronous methods; the asyncio server in
`server.py` owns one `BackendState` and calls into it. Nothing here logs tokens.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import tokens as tok

DEFAULT_ACCESS_TTL = 10 * 24 * 3600  # 10 days
PRIMARY_WINDOW_MINUTES = 300  # 5 h
SECONDARY_WINDOW_MINUTES = 10080  # 1 week

USAGE_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


class ControlError(Exception):
    """A bad control-API request (answered 400/404 with the message)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    stream_delay: float = 0.0  # seconds between stream events (SSE and WebSocket)
    deltas: int = 3  # number of response.output_text.delta events per text answer
    websocket: bool = True  # False: the WebSocket upgrade is answered 426
    down: bool = False  # True: 503 to everything but /_fake/
    down_retry_after: int | None = None  # Retry-After header on the `down` 503s
    primary_step: float = 1.0  # used-percent added to the 5 h window per model turn
    secondary_step: float = 0.5  # used-percent added to the weekly window per model turn
    enforce_limits: bool = True  # used percent >= 100 -> 429 usage_limit_reached
    reasoning_tokens: int = 8  # output_tokens_details.reasoning_tokens per generated answer
    turn_state: bool = True  # send x-codex-turn-state on model answers
    permessage_deflate: bool = True  # accept the client's permessage-deflate offer
    workspace_backend_origin: str | None = None  # accounts/check origin; None = this server
    models_patch: dict | None = None  # keys merged into every /codex/models entry
    log_bodies: bool = False  # keep decoded JSON bodies of model requests in the request log
    event_timestamps: bool = False  # benchmarks: ": t=<CLOCK_MONOTONIC ns>" comment line before each SSE event
    lenient: bool = False  # True: the backend rules (rules.py) are not enforced; any body is served

    def update(self, changes: dict) -> None:
        known = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise ControlError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})")
            current = getattr(self, key)
            if key == "models_patch":
                if value is not None and not isinstance(value, dict):
                    raise ControlError("config models_patch must be an object or null")
            elif key in ("workspace_backend_origin", "down_retry_after"):
                if value is not None and not isinstance(value, (str, int)):
                    raise ControlError(f"config {key} must be a string/number or null")
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ControlError(f"config {key} must be a boolean")
            elif isinstance(current, int):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ControlError(f"config {key} must be a non-negative integer")
            elif isinstance(current, float):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ControlError(f"config {key} must be a non-negative number")
                value = float(value)
            setattr(self, key, value)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- faults

MODEL_FAULTS = {
    "usage_limit",
    "usage_not_included",
    "status",
    "unauthorized",
    "slow",
    "hang",
    "cut",
    "drop",
    "failed",
    "ws_error",
    "huge_event",
}
REFRESH_FAULTS = {"refresh_error", "refresh_slow"}
FAULT_KINDS = MODEL_FAULTS | REFRESH_FAULTS
MATCHES = {"any", "http", "ws", "ws-upgrade"}
# what can happen at a WebSocket upgrade (an HTTP answer instead of 101)
UPGRADE_FAULTS = {"usage_limit", "usage_not_included", "status", "unauthorized", "drop"}


@dataclass
class Fault:
    id: int
    kind: str
    count: int  # remaining uses; -1 = until cleared
    account: str | None  # None = global queue (any account)
    match: str  # any | http | ws | ws-upgrade ; refresh faults ignore it
    params: dict

    def applies_to(self, transport: str) -> bool:
        if self.kind == "refresh_slow":  # taken before the grant is looked at (server._oauth_token)
            return transport == "refresh-delay"
        if self.kind in REFRESH_FAULTS:
            return transport == "refresh"
        if transport == "refresh":
            return False
        if transport == "ws-upgrade":
            return self.match == "ws-upgrade"
        if self.match == "any":
            return transport in ("http", "ws")
        return self.match == transport

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "count": self.count,
            "account": self.account,
            "match": self.match,
            **self.params,
        }


# --------------------------------------------------------------------------- accounts


def _fmt_pct(value: float) -> float | int:
    value = round(float(value), 4)
    return int(value) if value == int(value) else value


@dataclass
class Window:
    used_percent: float
    window_minutes: int
    reset_at: int

    def roll(self, now: float) -> None:
        if now >= self.reset_at:
            self.used_percent = 0.0
            span = max(60, self.window_minutes * 60)
            while self.reset_at <= now:
                self.reset_at += span

    def as_event(self, now: float) -> dict:
        return {
            "used_percent": _fmt_pct(self.used_percent),
            "window_minutes": self.window_minutes,
            "reset_after_seconds": max(0, int(self.reset_at - now)),
            "reset_at": self.reset_at,
        }

    def as_wham(self, now: float) -> dict:
        return {
            "used_percent": _fmt_pct(self.used_percent),
            "limit_window_seconds": self.window_minutes * 60,
            "reset_after_seconds": max(0, int(self.reset_at - now)),
            "reset_at": self.reset_at,
        }


@dataclass
class Account:
    name: str
    email: str
    plan: str
    account_id: str
    user_id: str
    access_ttl: float
    primary: Window
    secondary: Window | None
    credits_has_credits: bool = False
    credits_unlimited: bool = False
    credits_balance: str = "0"
    created_at: float = field(default_factory=time.time)
    # token bookkeeping
    valid_refresh: set = field(default_factory=set)
    used_refresh: set = field(default_factory=set)
    revoked: bool = False
    current_auth: dict | None = None
    # prompt cache: prompt_cache_key -> input tokens of the last completed answer by this account
    cache: dict = field(default_factory=dict)
    # statistics
    turns: int = 0  # completed model answers (generate != false)
    prewarms: int = 0  # WebSocket generate:false answers
    model_requests: int = 0  # every authenticated model request (HTTP POST or ws response.create)
    faults_applied: int = 0
    usage_totals: dict = field(default_factory=lambda: {k: 0 for k in USAGE_FIELDS})
    completed_responses: int = 0
    token_calls: int = 0  # /oauth/token calls attributed to this account
    refresh_count: int = 0  # successful refreshes
    refresh_failures: int = 0
    cache_hits: int = 0
    # refresh tokens presented again (the soak's check): after the token was rotated (answered
    # refresh_token_reused) or after it was refused for good; a retry after a transient fault is fine
    refresh_reused: int = 0
    refresh_after_refusal: int = 0
    revoked_at: float | None = None
    revoke_scope: str | None = None  # "all" | "refresh"

    def roll_windows(self, now: float) -> None:
        self.primary.roll(now)
        if self.secondary is not None:
            self.secondary.roll(now)

    def limit_reached(self) -> Window | None:
        if self.primary.used_percent >= 100:
            return self.primary
        if self.secondary is not None and self.secondary.used_percent >= 100:
            return self.secondary
        return None

    def add_usage(self, usage: dict) -> None:
        self.usage_totals["input_tokens"] += usage["input_tokens"]
        self.usage_totals["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
        self.usage_totals["output_tokens"] += usage["output_tokens"]
        self.usage_totals["reasoning_tokens"] += usage["output_tokens_details"]["reasoning_tokens"]
        self.usage_totals["total_tokens"] += usage["total_tokens"]
        self.completed_responses += 1

    # ---- wire shapes of the quota figures

    def rate_limit_headers(self, now: float) -> list[tuple[str, str]]:
        def b(value: bool) -> str:  # the real backend writes Python-style booleans
            return "True" if value else "False"

        p = self.primary
        h = [
            ("x-codex-plan-type", self.plan),
            ("x-codex-active-limit", "codex"),
            ("x-codex-primary-used-percent", str(_fmt_pct(p.used_percent))),
            ("x-codex-primary-window-minutes", str(p.window_minutes)),
            ("x-codex-primary-reset-after-seconds", str(max(0, int(p.reset_at - now)))),
            ("x-codex-primary-reset-at", str(p.reset_at)),
            ("x-codex-primary-over-secondary-limit-percent", "0"),
        ]
        s = self.secondary
        if s is not None:
            h += [
                ("x-codex-secondary-used-percent", str(_fmt_pct(s.used_percent))),
                ("x-codex-secondary-window-minutes", str(s.window_minutes)),
                ("x-codex-secondary-reset-after-seconds", str(max(0, int(s.reset_at - now)))),
                ("x-codex-secondary-reset-at", str(s.reset_at)),
            ]
        else:
            h += [
                ("x-codex-secondary-used-percent", "0"),
                ("x-codex-secondary-window-minutes", "0"),
                ("x-codex-secondary-reset-after-seconds", "0"),
                ("x-codex-secondary-reset-at", ""),
            ]
        h += [
            ("x-codex-credits-has-credits", b(self.credits_has_credits)),
            ("x-codex-credits-unlimited", b(self.credits_unlimited)),
            ("x-codex-credits-balance", self.credits_balance),
        ]
        return h

    def credits(self) -> dict:
        return {
            "has_credits": self.credits_has_credits,
            "unlimited": self.credits_unlimited,
            "balance": self.credits_balance,
        }

    def rate_limits_event(self, now: float) -> dict:
        limited = self.limit_reached() is not None
        return {
            "type": "codex.rate_limits",
            "plan_type": self.plan,
            "metered_limit_name": "codex",
            "rate_limits": {
                "allowed": not limited,
                "limit_reached": limited,
                "primary": self.primary.as_event(now),
                "secondary": self.secondary.as_event(now) if self.secondary else None,
            },
            "credits": self.credits(),
        }

    def wham_usage(self, now: float) -> dict:
        limited = self.limit_reached() is not None
        return {
            "user_id": self.user_id,
            "account_id": self.account_id,
            "email": self.email,
            "plan_type": self.plan,
            "rate_limit": {
                "allowed": not limited,
                "limit_reached": limited,
                "primary_window": self.primary.as_wham(now),
                "secondary_window": self.secondary.as_wham(now) if self.secondary else None,
            },
            "code_review_rate_limit": None,
            "additional_rate_limits": None,
            "credits": {
                **self.credits(),
                "approx_local_messages": [0, 0],
                "approx_cloud_messages": [0, 0],
            },
            "promo": None,
        }

    def public(self, now: float) -> dict:
        return {
            "name": self.name,
            "email": self.email,
            "plan": self.plan,
            "account_id": self.account_id,
            "user_id": self.user_id,
            "access_ttl_seconds": self.access_ttl,
            "revoked": self.revoked,
            "primary_used_percent": _fmt_pct(self.primary.used_percent),
            "primary_window_minutes": self.primary.window_minutes,
            "primary_reset_at": self.primary.reset_at,
            "secondary_used_percent": _fmt_pct(self.secondary.used_percent) if self.secondary else None,
            "secondary_window_minutes": self.secondary.window_minutes if self.secondary else None,
            "secondary_reset_at": self.secondary.reset_at if self.secondary else None,
            "credits": self.credits(),
            "limit_reached": self.limit_reached() is not None,
            "turns": self.turns,
            "prewarms": self.prewarms,
            "model_requests": self.model_requests,
            "completed_responses": self.completed_responses,
            "faults_applied": self.faults_applied,
            "cache_hits": self.cache_hits,
            "prompt_cache_keys": sorted(self.cache),
            "usage_totals": dict(self.usage_totals),
            "token_calls": self.token_calls,
            "refresh_count": self.refresh_count,
            "refresh_failures": self.refresh_failures,
            "refresh_reused": self.refresh_reused,
            "refresh_after_refusal": self.refresh_after_refusal,
            "revoked_at": self.revoked_at,
            "revoke_scope": self.revoke_scope,
        }


# --------------------------------------------------------------------------- the whole backend


class BackendState:
    def __init__(self, config: Config | None = None, *, default_plan: str = "plus"):
        self.config = config or Config()
        self.default_plan = default_plan
        self.accounts: dict[str, Account] = {}
        self.by_account_id: dict[str, str] = {}
        self.access_tokens: dict[str, tuple[str, int]] = {}  # token -> (account name, exp)
        self.refresh_tokens: dict[str, str] = {}  # every refresh token ever issued -> account name
        self.revoked_access: set[str] = set()
        self.faults: dict[str | None, list[Fault]] = {}
        self._fault_ids = itertools.count(1)
        self.request_log: deque = deque(maxlen=100_000)
        self._seq = itertools.count(1)
        self.token_calls_unknown = 0
        self.started_at = time.time()
        # refresh token -> result of its last presentation: "ok" (rotated), "refused", "transient"
        self.refresh_outcomes: dict[str, str] = {}
        self.id_tokens: list[str] = []  # every id token issued (for leak scans: GET /_fake/tokens)

    # ---- accounts and tokens

    def add_account(
        self,
        name: str | None = None,
        *,
        email: str | None = None,
        plan: str | None = None,
        access_ttl_seconds: float | None = None,
        initial_access_ttl_seconds: float | None = None,
        initial_access_age_seconds: float = 0.0,
        account_id: str | None = None,
        user_id: str | None = None,
        **figures: Any,
    ) -> dict:
        """Create an account and log it in; returns its auth.json dict.

        `access_ttl_seconds` is the lifetime of every access token issued to the account (default
        10 days); `initial_access_ttl_seconds` overrides it for the first token only (0 or negative
        = issued already expired, so the client refreshes once and then gets normal tokens);
        `initial_access_age_seconds` issues the first token that long ago (`iat` in the past, `exp`
        a lifetime after it): a login from a while back, part way to its expiry."""
        if name is None:
            n = len(self.accounts) + 1
            while f"acct{n}" in self.accounts:
                n += 1
            name = f"acct{n}"
        if not isinstance(name, str) or not name or "/" in name or len(name) > 64:
            raise ControlError("account name must be a non-empty string without '/'")
        if name in self.accounts:
            raise ControlError(f"account {name!r} already exists", 409)
        now = time.time()
        plan = plan or self.default_plan
        account_id = account_id or f"acct-{name}-{secrets.token_hex(4)}"
        if account_id in self.by_account_id:
            raise ControlError(f"account_id {account_id!r} already in use", 409)
        ttl = DEFAULT_ACCESS_TTL if access_ttl_seconds is None else float(access_ttl_seconds)
        primary_minutes = SECONDARY_WINDOW_MINUTES if plan == "free" else PRIMARY_WINDOW_MINUTES
        acct = Account(
            name=name,
            email=email or f"{name}@example.com",
            plan=plan,
            account_id=account_id,
            user_id=user_id or f"user-{name}-{secrets.token_hex(4)}",
            access_ttl=ttl,
            primary=Window(0.0, primary_minutes, int(now) + primary_minutes * 60),
            secondary=None
            if plan == "free"
            else Window(0.0, SECONDARY_WINDOW_MINUTES, int(now) + SECONDARY_WINDOW_MINUTES * 60),
            created_at=now,
        )
        self.accounts[name] = acct
        self.by_account_id[account_id] = name
        if figures:
            self.update_account(name, figures)
        return self.issue_tokens(name, access_ttl=initial_access_ttl_seconds,
                                 now=now - float(initial_access_age_seconds) if initial_access_age_seconds else None)

    def account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            raise ControlError(f"no account named {name!r}", 404) from None

    def issue_tokens(self, name: str, *, now: float | None = None, access_ttl: float | None = None) -> dict:
        """A fresh login for the account: new id/access/refresh tokens (older ones stay valid)."""
        acct = self.account(name)
        ts = tok.mint_tokens(
            email=acct.email,
            account_id=acct.account_id,
            plan=acct.plan,
            user_id=acct.user_id,
            access_ttl=acct.access_ttl if access_ttl is None else float(access_ttl),
            now=now,
        )
        self.access_tokens[ts.access_token] = (name, ts.access_exp)
        self.refresh_tokens[ts.refresh_token] = name
        acct.valid_refresh.add(ts.refresh_token)
        self.id_tokens.append(ts.id_token)
        acct.revoked = False
        acct.revoke_scope = None
        auth = tok.auth_json(ts, acct.account_id)
        acct.current_auth = auth
        return copy.deepcopy(auth)

    def revoke(self, name: str, *, refresh_only: bool = False) -> None:
        """Invalidate every token of the account (401 token_invalidated / refresh_token_invalidated).
        `refresh_only`: only its refresh tokens (refresh_token_invalidated); access tokens already
        issued keep working until they expire, as when a user signs out a session elsewhere."""
        acct = self.account(name)
        acct.revoked = True
        acct.revoked_at = time.time()
        acct.revoke_scope = "refresh" if refresh_only else "all"
        if not refresh_only:
            for token, (owner, _exp) in self.access_tokens.items():
                if owner == name:
                    self.revoked_access.add(token)
        acct.valid_refresh.clear()

    def limit(self, name: str, seconds: float, window: str = "primary") -> dict:
        """A timed usage limit: the window is at 100 % until `seconds` from now, then it resets
        (used 0 %) as any window does (turns meanwhile get 429 usage_limit_reached)."""
        acct = self.account(name)
        win = acct.primary if window == "primary" else acct.secondary if window == "secondary" else False
        if win is False:
            raise ControlError("limit window must be 'primary' or 'secondary'")
        if win is None:
            raise ControlError("this account has no secondary window")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise ControlError("limit seconds must be a positive number")
        now = time.time()
        win.used_percent = 100.0
        win.reset_at = int(now + float(seconds))
        return acct.public(now)

    def expire_access(self, name: str, now: float) -> int:
        """Expire every access token of the account now (server side; 401 token_expired), keeping
        its refresh token valid: what a client meets when its local clock or `exp` is wrong."""
        self.account(name)
        n = 0
        for token, (owner, exp) in list(self.access_tokens.items()):
            if owner == name and exp > now:
                self.access_tokens[token] = (owner, now)
                n += 1
        return n

    def update_account(self, name: str, changes: dict) -> dict:
        acct = self.account(name)
        now = time.time()
        for key, value in changes.items():
            if key == "plan":
                acct.plan = str(value)
            elif key == "email":
                acct.email = str(value)
            elif key == "access_ttl_seconds":
                acct.access_ttl = float(value)
            elif key in ("primary_used_percent", "secondary_used_percent"):
                win = acct.primary if key.startswith("primary") else acct.secondary
                if win is None:
                    raise ControlError("this account has no secondary window")
                win.used_percent = float(value)
            elif key in ("primary_reset_in_seconds", "secondary_reset_in_seconds"):
                win = acct.primary if key.startswith("primary") else acct.secondary
                if win is None:
                    raise ControlError("this account has no secondary window")
                win.reset_at = int(now + float(value))
            elif key in ("primary_reset_at", "secondary_reset_at"):
                win = acct.primary if key.startswith("primary") else acct.secondary
                if win is None:
                    raise ControlError("this account has no secondary window")
                win.reset_at = int(value)
            elif key == "primary_window_minutes":
                acct.primary.window_minutes = int(value)
            elif key == "secondary_window_minutes":
                if value in (None, 0):
                    acct.secondary = None
                elif acct.secondary is None:
                    acct.secondary = Window(0.0, int(value), int(now) + int(value) * 60)
                else:
                    acct.secondary.window_minutes = int(value)
            elif key == "credits_has_credits":
                acct.credits_has_credits = bool(value)
            elif key == "credits_unlimited":
                acct.credits_unlimited = bool(value)
            elif key == "credits_balance":
                acct.credits_balance = str(value)
            elif key == "clear_cache":
                if value:
                    acct.cache.clear()
            else:
                raise ControlError(f"unknown account field {key!r}")
        return acct.public(now)

    def authenticate(self, authorization: str | None, account_header: str | None, now: float):
        """Check a model/backend request. Returns (account, None) or (None, (code, message))."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None, ("missing_authorization", "Missing bearer or basic authentication in header.")
        token = authorization[7:].strip()
        entry = self.access_tokens.get(token)
        if entry is None:
            return None, (
                "invalid_token",
                "Could not parse your authentication token. Please try signing in again.",
            )
        name, exp = entry
        acct = self.accounts[name]
        if token in self.revoked_access:
            return None, (
                "token_invalidated",
                "Your authentication token has been invalidated. Please try signing in again.",
            )
        if exp <= now:
            return None, (
                "token_expired",
                "Provided authentication token is expired. Please try signing in again.",
            )
        if account_header != acct.account_id:
            return None, (
                "invalid_token",
                "The ChatGPT-Account-ID header does not match the account of this token.",
            )
        return acct, None

    def account_for_token(self, authorization: str | None) -> Account | None:
        """The account an access token belongs to, without validity checks (request log)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        entry = self.access_tokens.get(authorization[7:].strip())
        return self.accounts.get(entry[0]) if entry else None

    def refresh(self, refresh_token: str | None, now: float):
        """The /oauth/token grant. Returns (status, body, account or None)."""
        name = self.refresh_tokens.get(refresh_token or "")
        if name is None:
            self.token_calls_unknown += 1
            return 401, _oauth_error("invalid_grant", "Invalid refresh token."), None
        acct = self.accounts[name]
        acct.token_calls += 1
        before = self.refresh_outcomes.get(refresh_token)
        if before == "ok":
            acct.refresh_reused += 1
        elif before == "refused":
            acct.refresh_after_refusal += 1
        status, body, who = self._refresh(name, acct, refresh_token, now)
        if status == 200:
            self.refresh_outcomes[refresh_token] = "ok"
        elif status >= 500 or status == 429:
            self.refresh_outcomes.setdefault(refresh_token, "transient")
        else:
            self.refresh_outcomes[refresh_token] = "ok" if before == "ok" else "refused"
        return status, body, who

    def _refresh(self, name: str, acct: Account, refresh_token: str, now: float):
        fault = self.take_fault(name, "refresh")
        if fault is not None:
            acct.refresh_failures += 1
            return _refresh_fault_answer(fault) + (acct,)
        if refresh_token in acct.used_refresh:
            acct.refresh_failures += 1
            return (
                401,
                _oauth_error(
                    "refresh_token_reused",
                    "Your refresh token has already been used to generate a new access token. "
                    "Please try signing in again.",
                ),
                acct,
            )
        if acct.revoked or refresh_token not in acct.valid_refresh:
            acct.refresh_failures += 1
            return (
                401,
                _oauth_error(
                    "refresh_token_invalidated",
                    "Your refresh token has been invalidated. Please try signing in again.",
                ),
                acct,
            )
        acct.valid_refresh.discard(refresh_token)
        acct.used_refresh.add(refresh_token)
        auth = self.issue_tokens(name, now=now)
        acct.refresh_count += 1
        t = auth["tokens"]
        body = {
            "access_token": t["access_token"],
            "id_token": t["id_token"],
            "refresh_token": t["refresh_token"],
            "token_type": "Bearer",
            "expires_in": int(acct.access_ttl),
            "scope": "openid profile email offline_access",
        }
        return 200, body, acct

    def issued_tokens(self) -> dict:
        """Every token string issued so far, for leak scans of what a client or proxy wrote."""
        return {
            "access_tokens": list(self.access_tokens),
            "refresh_tokens": list(self.refresh_tokens),
            "id_tokens": list(self.id_tokens),
        }

    # ---- faults

    def add_fault(self, spec: dict) -> Fault:
        if not isinstance(spec, dict):
            raise ControlError("a fault must be a JSON object")
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in FAULT_KINDS:
            raise ControlError(f"unknown fault kind {kind!r} (known: {', '.join(sorted(FAULT_KINDS))})")
        account = spec.pop("account", None)
        if account is not None:
            self.account(account)
        count = spec.pop("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
            raise ControlError("fault count must be a positive integer or -1")
        match = spec.pop("match", "ws" if kind == "ws_error" else "any")
        if match not in MATCHES:
            raise ControlError(f"fault match must be one of {sorted(MATCHES)}")
        if match == "ws-upgrade" and kind not in UPGRADE_FAULTS:
            raise ControlError(f"fault kind {kind!r} cannot apply at the WebSocket upgrade")
        if kind == "status" and not isinstance(spec.get("status"), int):
            raise ControlError("a 'status' fault needs an integer 'status'")
        fault = Fault(next(self._fault_ids), kind, count, account, match, spec)
        self.faults.setdefault(account, []).append(fault)
        return fault

    def clear_faults(self, account: str | None = None, everything: bool = True) -> int:
        if everything:
            n = sum(len(q) for q in self.faults.values())
            self.faults.clear()
            return n
        q = self.faults.pop(account, [])
        return len(q)

    def take_fault(self, name: str, transport: str, *, prewarm: bool = False) -> Fault | None:
        """Consume the first fault (account queue first, then the global one) that applies.
        WebSocket prewarm frames (generate:false) only take faults with `include_prewarm`."""
        for key in (name, None):
            queue = self.faults.get(key)
            if not queue:
                continue
            for i, fault in enumerate(queue):
                if prewarm and not fault.params.get("include_prewarm"):
                    continue
                if fault.applies_to(transport):
                    if fault.count > 0:
                        fault.count -= 1
                        if fault.count == 0:
                            del queue[i]
                    return copy.deepcopy(fault)
        return None

    def list_faults(self) -> list[dict]:
        out = []
        for queue in self.faults.values():
            out.extend(f.as_dict() for f in queue)
        return sorted(out, key=lambda f: f["id"])

    # ---- request log

    def log(self, entry: dict) -> dict:
        entry = {"seq": next(self._seq), "ts": time.time(), **entry}
        self.request_log.append(entry)
        return entry

    # ---- snapshot

    def snapshot(self) -> dict:
        now = time.time()
        for acct in self.accounts.values():
            acct.roll_windows(now)
        return {
            "now": now,
            "config": self.config.as_dict(),
            "accounts": {name: acct.public(now) for name, acct in self.accounts.items()},
            "token_calls_unknown": self.token_calls_unknown,
            "faults": self.list_faults(),
            "requests_logged": len(self.request_log),
        }


def _oauth_error(code: str, message: str, shape: str = "object") -> dict:
    if shape == "string":
        return {"error": code, "error_description": message}
    if shape == "top":
        return {"code": code, "message": message}
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _refresh_fault_answer(fault: Fault) -> tuple[int, dict]:
    p = fault.params
    status = int(p.get("status", 401))
    code = p.get("code", "refresh_token_expired")
    message = p.get("message", f"Simulated refresh failure ({code}).")
    return status, _oauth_error(code, message, p.get("shape", "object"))


# --------------------------------------------------------------------------- timed actions

SCHEDULE_ACTIONS = {
    "fault": "add a fault: {fault: {kind, account?, count?, match?, ...params}}",
    "clear_faults": "clear the fault queues: {account?} (one queue, or all)",
    "limit": "a timed usage limit: {account, seconds, window?: primary|secondary}",
    "revoke": "revoke the account's tokens: {account, refresh_only?: false}",
    "login": "a fresh login: {account, access_ttl_seconds?, write?} (write: <pool-dir>/<account>.json)",
    "expire": "expire the account's access tokens now: {account}",
    "account": "change account figures: {account, changes: {...}} (as PATCH /_fake/accounts/<name>)",
    "config": "change the configuration: {changes: {...}} (as POST /_fake/config)",
}


class Schedule:
    """Actions to run at given times (a fault schedule, timed limits, a revocation and a later
    re-login, ...): `at` is seconds after the actions were added. Pending and done actions are
    listed by `view()`; done ones carry `ran_at` and `ok`/`error`, never a token."""

    def __init__(self) -> None:
        self.pending: list[dict] = []
        self.done: list[dict] = []
        self._ids = itertools.count(1)

    def add(self, specs: list, accounts: dict, now: float) -> list[dict]:
        added = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise ControlError("a scheduled action must be a JSON object")
            action = dict(spec)
            kind = action.get("do")
            if kind not in SCHEDULE_ACTIONS:
                raise ControlError(f"unknown scheduled action {kind!r} (known: {', '.join(sorted(SCHEDULE_ACTIONS))})")
            at = action.pop("at", 0)
            if not isinstance(at, (int, float)) or isinstance(at, bool) or at < 0:
                raise ControlError("a scheduled action's 'at' must be a non-negative number of seconds")
            name = action.get("account")
            if kind in ("limit", "revoke", "login", "expire", "account") and name not in accounts:
                raise ControlError(f"scheduled {kind}: no account named {name!r}", 404)
            if kind == "fault":
                fault = action.get("fault")
                if not isinstance(fault, dict) or fault.get("kind") not in FAULT_KINDS:
                    raise ControlError("scheduled fault: 'fault' must be a fault object with a known kind")
                if fault.get("account") is not None and fault["account"] not in accounts:
                    raise ControlError(f"scheduled fault: no account named {fault['account']!r}", 404)
            if kind in ("account", "config") and not isinstance(action.get("changes"), dict):
                raise ControlError(f"scheduled {kind}: 'changes' must be an object")
            added.append({"id": next(self._ids), "at_unix": now + float(at), **action})
        self.pending.extend(added)
        self.pending.sort(key=lambda a: (a["at_unix"], a["id"]))
        return copy.deepcopy(added)

    def next_due(self) -> dict | None:
        return self.pending[0] if self.pending else None

    def take(self) -> dict:
        return self.pending.pop(0)

    def record(self, action: dict, ran_at: float, error: str | None, result: dict | None) -> None:
        entry = {**action, "ran_at": ran_at, "ok": error is None}
        if error is not None:
            entry["error"] = error
        if result:
            entry["result"] = result
        self.done.append(entry)

    def clear(self) -> int:
        n = len(self.pending)
        self.pending.clear()
        return n

    def view(self) -> dict:
        return {"pending": copy.deepcopy(self.pending), "done": copy.deepcopy(self.done)}
