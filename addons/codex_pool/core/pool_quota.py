"""The pool's quota as one account's figures, for clients: what `/status`, `GET /wham/usage`, the
`x-codex-primary-*` / `x-codex-secondary-*` headers and `codex.rate_limits` events show them.

A client shown one account's figures judges the whole pool by it: one account at 95 % makes it
believe the pool is nearly spent; one limited account makes it stop although others have headroom.
So every figure a client sees describes the pool (each account's own figures are still read first
and kept for selection, /admin/accounts and /metrics). Pure.

The formula, per window (primary = 5 hours, secondary = weekly):
- accounts that can serve at all count: usable, refreshing, cooling and limited ones — not
  disabled ones (re-login needed) or ones whose tokens expired for good;
- `used_percent` = the mean of those accounts' used percent (a reset that has passed counts 0;
  a limited account counts 100 in the 5-hour window whatever it last reported); accounts with no
  figures yet are left out of the mean; with none known the window is not shown;
- `reset_at` = the earliest reset among the accounts with something used: when headroom next grows;
- `window_minutes` = the one most of them report;
- `limit_reached` = every counted account is limited (then the pool answers 429 anyway);
- credits: has / unlimited if any account has them, the balance summed; plan: the most common.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from codex_pool.core.quota import Credits, RateLimits, Window

COUNTED_STATES = frozenset({"usable", "refreshing", "cooling", "limited"})
LIMITED = "limited"
EVENT_TYPE = "codex.rate_limits"
PRIMARY_MINUTES, SECONDARY_MINUTES = 300, 10080  # the 5-hour and weekly windows


class AccountQuota(NamedTuple):
    """One account as the pool formula reads it."""

    state: str  # AccountRegistry.state
    limits: RateLimits | None
    plan: str | None


@dataclass(frozen=True)
class PoolQuota:
    primary: Window | None
    secondary: Window | None
    credits: Credits | None
    plan: str | None
    limit_reached: bool
    accounts: int  # accounts counted

    def headers(self, now: float) -> dict[str, str]:
        """The `x-codex-*` quota headers, written as the backend writes them."""
        out: dict[str, str] = {}
        for which, window in (("primary", self.primary), ("secondary", self.secondary)):
            if window is None:
                continue
            out[f"x-codex-{which}-used-percent"] = _pct(window.used_percent)
            if window.window_minutes is not None:
                out[f"x-codex-{which}-window-minutes"] = str(window.window_minutes)
            if window.reset_at is not None:
                out[f"x-codex-{which}-reset-at"] = str(int(window.reset_at))
                out[f"x-codex-{which}-reset-after-seconds"] = str(max(0, int(window.reset_at - now)))
        if self.credits is not None:
            c = self.credits
            out["x-codex-credits-has-credits"] = "True" if c.has_credits else "False"
            out["x-codex-credits-unlimited"] = "True" if c.unlimited else "False"
            out["x-codex-credits-balance"] = c.balance or "0"
        return out

    def event(self, now: float, original: dict[str, Any] | None = None) -> dict[str, Any]:
        """A `codex.rate_limits` event with the pool's figures; fields of the account's own event
        that say nothing about quota (metered_limit_name, ...) are kept."""
        event = dict(original or {})
        event["type"] = EVENT_TYPE
        limits = dict(event.get("rate_limits") or {}) if isinstance(event.get("rate_limits"), dict) else {}
        limits["allowed"] = not self.limit_reached
        limits["limit_reached"] = self.limit_reached
        for which, window in (("primary", self.primary), ("secondary", self.secondary)):
            limits[which] = _event_window(window, now)
        event["rate_limits"] = limits
        if self.plan:
            event["plan_type"] = self.plan
        if self.credits is not None:
            event["credits"] = _credits(self.credits)
        return event

    def usage_payload(self, now: float) -> dict[str, Any]:
        """`GET /backend-api/wham/usage` as the pool sees it (no account's identity in it)."""
        return {
            "plan_type": self.plan or "plus",
            "rate_limit": {
                "allowed": not self.limit_reached,
                "limit_reached": self.limit_reached,
                "primary_window": _usage_window(self.primary, now, PRIMARY_MINUTES),
                "secondary_window": _usage_window(self.secondary, now, SECONDARY_MINUTES),
            },
            "code_review_rate_limit": None,
            "additional_rate_limits": None,
            "credits": _credits(self.credits or Credits(False, False, "0")),
            "promo": None,
        }


def pool_quota(accounts: Iterable[AccountQuota], now: float) -> PoolQuota:
    counted = [a for a in accounts if a.state in COUNTED_STATES]
    primary = _mean_window([(_used(a, "primary", now), a.limits.primary if a.limits else None) for a in counted])
    secondary = _mean_window([(_used(a, "secondary", now), a.limits.secondary if a.limits else None) for a in counted])
    credits = [a.limits.credits for a in counted if a.limits is not None and a.limits.credits is not None]
    return PoolQuota(
        primary=primary,
        secondary=secondary,
        credits=_sum_credits(credits) if credits else None,
        plan=_most_common([a.plan or (a.limits.plan if a.limits else None) for a in counted]),
        limit_reached=bool(counted) and all(a.state == LIMITED for a in counted),
        accounts=len(counted),
    )


def _used(account: AccountQuota, which: str, now: float) -> float | None:
    window = getattr(account.limits, which) if account.limits is not None else None
    if account.state == LIMITED and which == "primary":
        return 100.0
    return window.used_now(now) if window is not None else None


def _mean_window(rows: list[tuple[float | None, Window | None]]) -> Window | None:
    known = [(used, w) for used, w in rows if used is not None]
    if not known:
        return None
    resets = [w.reset_at for used, w in known if w is not None and w.reset_at is not None and used > 0]
    return Window(used_percent=round(sum(u for u, _ in known) / len(known), 1),
                  window_minutes=_most_common([w.window_minutes for _, w in known if w is not None]),
                  reset_at=min(resets) if resets else None)


def _most_common(values: list) -> Any:
    """The value most of them have (the first seen on a tie), None for none. (collections.Counter
    costs several times more for the handful of accounts a pool has, on every turn.)"""
    counts: dict = {}
    for v in values:
        if v:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _sum_credits(credits: list[Credits]) -> Credits:
    total = 0.0
    for c in credits:
        try:
            total += float(c.balance or 0)
        except ValueError:
            pass
    return Credits(has_credits=any(c.has_credits for c in credits), unlimited=any(c.unlimited for c in credits),
                   balance=f"{total:g}")


def _pct(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _event_window(window: Window | None, now: float) -> dict[str, Any] | None:
    if window is None:
        return None
    out: dict[str, Any] = {"used_percent": window.used_percent, "window_minutes": window.window_minutes}
    if window.reset_at is not None:
        out["reset_after_seconds"] = max(0, int(window.reset_at - now))
        out["reset_at"] = int(window.reset_at)
    return out


def _usage_window(window: Window | None, now: float, default_minutes: int) -> dict[str, Any] | None:
    """Codex 0.169.0 parses a window only with all four fields as whole numbers (a float, a null or a
    missing field makes it drop the whole answer: `/status` then says "data not available yet"); a
    window nothing of which is used yet resets a full window from now."""
    if window is None:
        return None
    seconds = int((window.window_minutes or default_minutes) * 60)
    reset_at = int(window.reset_at) if window.reset_at is not None else int(now) + seconds
    return {"used_percent": int(round(window.used_percent)), "limit_window_seconds": seconds,
            "reset_after_seconds": max(0, reset_at - int(now)), "reset_at": reset_at}


def _credits(c: Credits) -> dict[str, Any]:
    return {"has_credits": bool(c.has_credits), "unlimited": bool(c.unlimited), "balance": c.balance or "0"}


# ---- rewriting a codex.rate_limits event inside an SSE stream ------------------------------------

MARKER = b"event: " + EVENT_TYPE.encode()
_MARKER_PREFIXES = tuple(MARKER[:i] for i in range(len(MARKER) - 1, 0, -1))  # the longest first
_EVENT_LINE = re.compile(rb"^event: ?" + re.escape(EVENT_TYPE.encode()) + rb"[ \t]*\r?$", re.MULTILINE)
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DATA_LINE = re.compile(rb"^data: ?(.*?)\r?$", re.MULTILINE)
MAX_HELD_BYTES = 64 * 1024  # a rate-limit event is ~1 KB; past this, bytes go on untouched


class RateLimitEventRewriter:
    """Stream transform (identity-encoded SSE): the data line of every `codex.rate_limits` event (an
    `event: codex.rate_limits` line at a line start, whose data is JSON of that type) is replaced by
    `replace(original_event_dict)`; every other byte passes unchanged and at once. Bytes are held back
    only while they may belong to such an event (its `event:` line seen and the event not yet ended,
    or a chunk ending in what could be the start of that line), never more than MAX_HELD_BYTES. Never
    raises: on its own failure it passes everything on untouched from then on."""

    def __init__(self, replace) -> None:
        self.replace = replace
        self.carry = b""
        self.at_line_start = True  # the bytes sent so far end a line
        self.failed = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # the end (or an empty HTTP/2 DATA frame): what is held back goes on as it came
            return self.flush()
        if self.failed:
            return chunk
        if not self.carry and b"codex.rate_limits" not in chunk and not chunk.endswith(_MARKER_PREFIXES):
            self.at_line_start = chunk[-1:] in (b"\n", b"\r")
            return chunk
        data = self.carry + chunk
        self.carry = b""
        try:
            out = self._rewrite(data)
        except Exception:
            self.failed = True
            out = data
        if out:
            self.at_line_start = out[-1:] in (b"\n", b"\r")
        return out

    def flush(self) -> bytes:
        """Whatever is held back, as it came."""
        out, self.carry = self.carry, b""
        return out

    def _rewrite(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos = 0
        for m in _EVENT_LINE.finditer(data):
            at = m.start()
            if at < pos or (at == 0 and not self.at_line_start):
                continue
            end = _EVENT_END.search(data, m.end() - 1)
            if end is None:  # the event is not complete yet: hold it back (bounded)
                if len(data) - at > MAX_HELD_BYTES:
                    break
                out.append(data[pos:at])
                self.carry = data[at:]
                return b"".join(out)
            event = data[at:end.start()]
            out.append(data[pos:at])
            out.append(self._event(event))
            pos = end.start()
        rest = data[pos:]
        for prefix in _MARKER_PREFIXES:
            if rest.endswith(prefix):
                before = len(rest) - len(prefix)
                if (rest[before - 1:before] in (b"\n", b"\r")) if before else (self.at_line_start if pos == 0 else
                                                                                 data[pos - 1:pos] in (b"\n", b"\r")):
                    self.carry = prefix
                    rest = rest[:before]
                break
        out.append(rest)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        """One whole event (without its blank line), its data line replaced when it is ours."""
        lines = list(_DATA_LINE.finditer(event))
        if len(lines) != 1:
            return event
        line = lines[0]
        try:
            doc = json.loads(line.group(1))
        except ValueError:
            return event
        if not isinstance(doc, dict) or doc.get("type", EVENT_TYPE) != EVENT_TYPE:
            return event
        new = self.replace(doc)
        if new is None:
            return event
        payload = b"data: " + json.dumps(new, separators=(",", ":")).encode()
        tail = b"\r" if line.group(0).endswith(b"\r") else b""
        return event[:line.start()] + payload + tail + event[line.end():]
