"""Client keys: who may use the pool, and how much. Pure (no I/O; the keys file is
storage/keys_file.py, key creation scripts/keys).

A key is `cp-` + 40+ random characters, shown once when created; the keys file keeps only its
keyed hash (HMAC-SHA256 keyed with the file's own random `salt`), its name, dates, allowed models
and limits. The keys are ~240 random bits, so the hash needs no stretching; the salt makes the
hashes of one file useless for another. Presented keys are hashed the same way and compared with
every stored hash in constant time.

Limits are rolling windows: requests per minute, tokens per 5 hours / day / week (input + output as
the ledger counts them), US dollars per day / 30 days (the `prices` table). `KeyUsage` holds what
each key used, in one-minute buckets (requests are counted on admission, tokens and cost when a
turn finishes: a turn is never cut because of a limit reached during it); the ledger is the source
of truth it is rebuilt from at start-up (`usage_from_records`). Usage leaves a window exactly
`window` seconds after it was counted (a bucket leaves with its latest record, so an earlier
record of the same minute is counted up to a minute longer, never shorter).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from codex_pool.core.usage_report import record_cost

KEY_PREFIX = "cp-"
MIN_KEY_CHARS = 40
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# limit -> (rolling window in seconds, what it counts)
LIMITS: dict[str, tuple[int, str]] = {
    "requests_per_minute": (60, "requests"),
    "tokens_per_5h": (5 * 3600, "tokens"),
    "tokens_per_day": (86400, "tokens"),
    "tokens_per_week": (7 * 86400, "tokens"),
    "usd_per_day": (86400, "usd"),
    "usd_per_month": (30 * 86400, "usd"),
}
LONGEST_WINDOW = max(w for w, _ in LIMITS.values())
BUCKET_SECONDS = 60

ENTRY_FIELDS = ("name", "hash", "created", "expires", "models", "limits", "revoked")
FILE_FIELDS = ("salt", "keys")

# why a request without a usable key is refused (the metric's `reason` label)
MISSING, UNKNOWN, REVOKED, EXPIRED = "missing", "unknown", "revoked", "expired"


class KeysError(ValueError):
    """The keys file is not valid: names the entry and the problem."""


@dataclass(frozen=True)
class ClientKey:
    name: str
    digest: str  # hex HMAC-SHA256 of the key
    created: float
    expires: float | None = None
    models: tuple[str, ...] | None = None  # None: every model
    limits: Mapping[str, float] = field(default_factory=dict)
    revoked: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """The keys file entry (whole numbers written as integers: the file is read by people too)."""
        doc: dict[str, Any] = {"name": self.name, "hash": self.digest, "created": _whole(self.created)}
        if self.expires is not None:
            doc["expires"] = _whole(self.expires)
        if self.models is not None:
            doc["models"] = list(self.models)
        if self.limits:
            doc["limits"] = {k: _whole(v) for k, v in self.limits.items()}
        if self.revoked is not None:
            doc["revoked"] = _whole(self.revoked)
        return doc


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def key_digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, b"codex-pool client key\x00" + key.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def looks_like_key(text: str) -> bool:
    return text.startswith(KEY_PREFIX) and len(text) >= len(KEY_PREFIX) + MIN_KEY_CHARS


class KeyCheck(NamedTuple):
    key: ClientKey | None  # the key presented, when it is one of ours
    refusal: str | None  # MISSING | UNKNOWN | REVOKED | EXPIRED, or None when it may be used


def identify(keys: Sequence[ClientKey], presented: str | None, secret: bytes, now: float) -> KeyCheck:
    """Which key the client presented. Every stored hash is compared (constant time each, no early
    exit), so timing says nothing about which keys exist."""
    if not presented:
        return KeyCheck(None, MISSING)
    wanted = key_digest(secret, presented)
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, wanted):
            found = key
    if found is None:
        return KeyCheck(None, UNKNOWN)
    return KeyCheck(found, key_state_refusal(found, now))


def key_state_refusal(key: ClientKey, now: float) -> str | None:
    """REVOKED or EXPIRED when the key may no longer be used, else None: the one rule for both."""
    if key.revoked is not None:
        return REVOKED
    if key.expires is not None and key.expires <= now:
        return EXPIRED
    return None


def model_of(body: bytes | None) -> tuple[bool, str | None]:
    """(readable, model) of a JSON request body: the top-level `model` as the backend will read it
    (json.loads, last duplicate wins), for the allowed-models check; (False, None) when the body
    is not a JSON object."""
    import json
    try:
        doc = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return False, None
    if not isinstance(doc, dict):
        return False, None
    model = doc.get("model")
    return True, model if isinstance(model, str) else None


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` value."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# ---- the keys file ------------------------------------------------------------------------------

class KeyFile(NamedTuple):
    salt: bytes  # the HMAC key the file's hashes were made with
    keys: list[ClientKey]


def parse_keys(doc: Any) -> KeyFile:
    """The keys file's document `{"salt": hex, "keys": [...]}` → KeyFile; KeysError naming the first
    problem (the caller keeps the keys it had)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysError('expected {"salt": "<hex>", "keys": [ ... ]}')
    unknown = sorted(map(str, set(doc) - set(FILE_FIELDS)))
    if unknown:
        raise KeysError(f"unknown field {', '.join(unknown)} at the top; allowed: {', '.join(FILE_FIELDS)}")
    salt = doc.get("salt")
    if not isinstance(salt, str) or not re.fullmatch(r"(?:[0-9a-f]{2}){16,64}", salt):
        raise KeysError("salt must be 32 to 128 hex digits (scripts/keys writes it; do not edit it: every hash depends on it)")
    out: list[ClientKey] = []
    names: set[str] = set()
    digests: set[str] = set()
    for i, entry in enumerate(doc["keys"]):
        where = f"keys[{i}]"
        if not isinstance(entry, dict):
            raise KeysError(f"{where}: expected an object")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise KeysError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-' (got {name!r})")
        where = f"key {name!r}"
        if name in names:
            raise KeysError(f"{where}: the name is used twice")
        digest = entry.get("hash")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise KeysError(f"{where}: hash must be 64 hex digits (keys are stored only as their hash)")
        if digest in digests:
            raise KeysError(f"{where}: the same key is stored twice")
        unknown = sorted(map(str, set(entry) - set(ENTRY_FIELDS)))
        if unknown:
            raise KeysError(f"{where}: unknown field {', '.join(unknown)}; allowed: {', '.join(ENTRY_FIELDS)}")
        created = _time(entry.get("created"), f"{where}: created")
        if created is None:
            raise KeysError(f"{where}: created is required")
        models = entry.get("models")
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
            raise KeysError(f"{where}: models must be a list of model names")
        out.append(ClientKey(name=name, digest=digest, created=created,
                             expires=_time(entry.get("expires"), f"{where}: expires"),
                             models=tuple(models) if models is not None else None,
                             limits=parse_limits({} if entry.get("limits") is None else entry["limits"], where),
                             revoked=_time(entry.get("revoked"), f"{where}: revoked")))
        names.add(name)
        digests.add(digest)
    return KeyFile(bytes.fromhex(salt), out)


def keys_doc(salt: bytes, keys: Iterable[ClientKey]) -> dict[str, Any]:
    return {"salt": salt.hex(), "keys": [k.to_doc() for k in keys]}


def parse_limits(limits: Any, where: str = "limits") -> dict[str, float]:
    if not isinstance(limits, dict):
        raise KeysError(f"{where}: limits must be an object")
    out = {}
    for name, value in limits.items():
        if name not in LIMITS:
            raise KeysError(f"{where}: unknown limit {name!r}; allowed: {', '.join(LIMITS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise KeysError(f"{where}: {name} must be a positive number")
        out[name] = float(value)
    return out


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise KeysError(f"{where} must be unix seconds")
    return float(value)


# ---- usage and limits --------------------------------------------------------------------------

class Refusal(NamedTuple):
    limit: str  # a LIMITS name, or "model"
    used: float
    bound: float
    resets_at: float | None  # when the window lets the key through again
    message: str


class KeyUsage:
    """One key's usage in one-minute buckets over the longest window, plus the admission times of
    the last minute (for requests per minute, counted exactly).

    Something counted at `ts` is inside a window of `w` seconds while `ts > now - w`: it leaves at
    exactly `ts + w` (a minute's bucket leaves with its latest record). Records may come in any
    order (a rebuild from the ledger, turns finishing out of order).

    The buckets are kept as running totals (tokens, and cost in nano-dollars: integers, so sums
    are exact), so `used` and `resets_at` cost a binary search whatever the history: they run
    before every forwarded request."""

    USD_SCALE = 10**9  # nano-dollars

    def __init__(self) -> None:
        self.admitted: deque[float] = deque()  # admission times within the last minute, ascending
        self._start: list[float] = []  # bucket i's minute, ascending
        self._last: list[float] = []  # the latest ts counted in bucket i (ascending too)
        self._cum: dict[str, list[int]] = {"tokens": [], "usd": []}  # running totals up to bucket i
        self._base: dict[str, int] = {"tokens": 0, "usd": 0}  # the total before bucket 0
        self._head = 0  # buckets before this one have left the longest window

    def admit(self, now: float) -> None:
        """Count one request admitted at `now` (any order: kept sorted)."""
        if not self.admitted or self.admitted[-1] <= now:
            self.admitted.append(now)
        else:
            bisect.insort(self.admitted, now)
        self._trim(now)

    def record(self, ts: float, tokens: int, usd: float) -> None:
        """Count a finished turn's tokens and cost at `ts` (negative amounts count as 0)."""
        add = {"tokens": max(0, int(tokens)), "usd": max(0, round(usd * self.USD_SCALE))}
        start = ts - ts % BUCKET_SECONDS
        n = len(self._start)
        if n > self._head and self._start[-1] == start:
            i = n - 1
        elif n == self._head or self._start[-1] < start:
            i = self._insert(n, start, ts)
        else:  # an older minute (turns finishing out of order)
            i = bisect.bisect_left(self._start, start, self._head)
            if self._start[i] != start:
                self._insert(i, start, ts)
        self._last[i] = max(self._last[i], ts)
        for what, cum in self._cum.items():
            if add[what]:
                for j in range(i, len(cum)):  # only the buckets from i on: 1 when in order
                    cum[j] += add[what]

    def _insert(self, i: int, start: float, ts: float) -> int:
        self._start.insert(i, start)
        self._last.insert(i, ts)
        for what, cum in self._cum.items():
            cum.insert(i, self._before(what, i))
        return i

    def _before(self, what: str, i: int) -> int:
        """The running total before bucket i."""
        return self._cum[what][i - 1] if i > 0 else self._base[what]

    def _trim(self, now: float) -> None:
        while self.admitted and self.admitted[0] <= now - LIMITS["requests_per_minute"][0]:
            self.admitted.popleft()
        self._head = bisect.bisect_right(self._last, now - LONGEST_WINDOW, self._head)
        if self._head > 256 and self._head * 2 > len(self._start):  # drop what left, now and then
            h = self._head
            for what, cum in self._cum.items():
                self._base[what] = cum[h - 1]
                del cum[:h]
            del self._start[:h], self._last[:h]
            self._head = 0

    def _first_inside(self, window: int, now: float) -> int:
        return bisect.bisect_right(self._last, now - window, self._head)

    def _amount(self, what: str, units: int) -> float:
        return units / self.USD_SCALE if what == "usd" else units

    def used(self, limit: str, now: float) -> float:
        self._trim(now)
        window, what = LIMITS[limit]
        if what == "requests":
            return float(sum(1 for t in self.admitted if t > now - window))
        cum = self._cum[what]
        j = self._first_inside(window, now)
        return self._amount(what, cum[-1] - self._before(what, j)) if j < len(cum) else 0

    def resets_at(self, limit: str, bound: float, now: float) -> float:
        """When usage in the rolling window drops below `bound` again (if nothing more is used);
        `now` when it is below already."""
        self._trim(now)
        window, what = LIMITS[limit]
        if what == "requests":
            inside = [t for t in self.admitted if t > now - window]
            must_leave = math.floor(len(inside) - bound) + 1  # the oldest ones, in order
            return inside[must_leave - 1] + window if must_leave > 0 else now
        cum = self._cum[what]
        lo, hi = self._first_inside(window, now), len(cum)
        if lo == hi or self._amount(what, cum[-1] - self._before(what, lo)) < bound:
            return now
        # the first bucket k whose leaving (with every older one) brings the rest below `bound`
        while lo < hi:
            mid = (lo + hi) // 2
            if self._amount(what, cum[-1] - cum[mid]) < bound:
                hi = mid
            else:
                lo = mid + 1
        return self._last[lo] + window

    def snapshot(self, limits: Mapping[str, float], now: float) -> dict[str, dict[str, float | None]]:
        """Per limit (set ones and the usual windows): used, limit, remaining, resets_at."""
        out = {}
        for name in LIMITS:
            bound = limits.get(name)
            used = self.used(name, now)
            out[name] = {"used": round(used, 6), "limit": bound,
                         "remaining": None if bound is None else round(max(0.0, bound - used), 6),
                         "resets_at": None if bound is None or used < bound else self.resets_at(name, bound, now)}
        return out


def check_limits(key: ClientKey, usage: KeyUsage, model: str | None, now: float) -> Refusal | None:
    """A model the key may not use, else the limit the key is at or over that frees up last (its
    `resets_at` is when the key gets through again: with two limits reached, the earlier reset
    would only lead to another refusal); None when it may go on. Checked before a request is
    forwarded; a limit reached mid-turn never cuts the turn."""
    if key.models is not None and model is not None and model not in key.models:
        return Refusal("model", 0, 0, None, f"the key {key.name!r} may not use the model {model!r}; "
                                            f"allowed: {', '.join(key.models) or 'none'}")
    worst: Refusal | None = None
    for name, bound in key.limits.items():
        used = usage.used(name, now)
        if used >= bound:
            resets = usage.resets_at(name, bound, now)
            what = name.replace("_", " ").replace("usd", "US$")
            if worst is None or resets > (worst.resets_at or 0):
                worst = Refusal(name, used, bound, resets,
                                f"the key {key.name!r} reached its limit of {bound:g} ({what}); used {used:g}")
    return worst


def usage_from_records(records: Iterable[Mapping[str, Any]], names: Iterable[str], now: float,
                       prices: Mapping[str, Mapping[str, float]] | None = None,
                       unpriced: set[str] | None = None) -> dict[str, KeyUsage]:
    """Each named key's usage rebuilt from ledger records (those whose `key` is one of `names`;
    pass those of the last LONGEST_WINDOW): a request counts at its `ts` (admission), its tokens
    (input + output) and cost at its end (`ts` + `duration_ms`), as the proxy counts them live.
    Cost from `prices` ($ per million tokens; 0 for a model without a price, whose name is added
    to `unpriced` when a set is passed)."""
    out = {name: KeyUsage() for name in names}
    turns: list[tuple[float, str, int, float]] = []  # fed in time order: the ledger is not
    for rec in records:
        name, ts = rec.get("key"), rec.get("ts")
        usage = out.get(name) if isinstance(name, str) else None
        if usage is None or not _number(ts):
            continue
        if now - LIMITS["requests_per_minute"][0] < ts <= now:
            usage.admit(ts)
        tokens = sum(int(v) for v in (rec.get("input_tokens"), rec.get("output_tokens")) if _number(v) and v > 0)
        duration = rec.get("duration_ms")
        end = ts + duration / 1000 if _number(duration) and duration > 0 else ts
        if not tokens or end <= now - LONGEST_WINDOW:
            continue
        usd = record_cost(rec, prices or {})
        if usd is None:
            usd = 0.0
            if unpriced is not None:
                unpriced.add(str(rec.get("model")))
        turns.append((end, name, tokens, usd))
    turns.sort()
    for end, name, tokens, usd in turns:
        out[name].record(end, tokens, usd)
    for usage in out.values():
        usage._trim(now)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
