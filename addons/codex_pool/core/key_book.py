"""The client keys in force and what each key used: the one place the proxy's hooks ask "who is
this, and may they go on?" (mitm/client_auth.py) and tell "this is what they used"
(`Pool.account_for`, every ledger record). Pure; the keys file is read by storage/keys_file.py.

Usage per key is rebuilt from the ledger at start-up (`record` each record of the longest window),
so limits survive restarts; requests per minute count admissions, tokens and cost count finished
records (input + output tokens; cost from the `prices` table, 0 for a model without a price).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codex_pool.core.client_keys import (
    UNKNOWN,
    ClientKey,
    KeyCheck,
    KeyFile,
    KeyUsage,
    Refusal,
    check_limits,
    identify,
    key_state_refusal,
)
from codex_pool.core.usage_report import record_cost


class KeyBook:
    def __init__(self) -> None:
        self.file: KeyFile | None = None  # None: client keys are off
        self.usage: dict[str, KeyUsage] = {}
        self.prices: Mapping[str, Mapping[str, float]] = {}
        self.file_error: str | None = None  # keys are on but the file cannot be read: refuse everyone
        self._replay: list[tuple[str, str, float, int, float]] | None = None  # during a rebuild

    @property
    def on(self) -> bool:
        return self.file is not None

    def load(self, keyfile: KeyFile | None) -> None:
        """New keys (None turns keys off). Usage is kept by name: an edited key keeps its count."""
        self.file = keyfile
        if keyfile is not None:
            self.file_error = None

    def names(self) -> list[str]:
        return [k.name for k in self.file.keys] if self.file is not None else []

    def get(self, name: str) -> ClientKey | None:
        if self.file is None:
            return None
        return next((k for k in self.file.keys if k.name == name), None)

    def check(self, name: str | None, now: float) -> KeyCheck:
        """The key named on a flow, as it stands now (a revocation or expiry since its headers counts)."""
        key = self.get(name) if name else None
        if key is None:
            return KeyCheck(None, UNKNOWN)
        return KeyCheck(key, key_state_refusal(key, now))

    def identify(self, presented: str | None, now: float) -> KeyCheck:
        if self.file is None:
            return KeyCheck(None, None)
        return identify(self.file.keys, presented, self.file.salt, now)

    def usage_of(self, name: str) -> KeyUsage:
        usage = self.usage.get(name)
        if usage is None:
            usage = self.usage[name] = KeyUsage()
        return usage

    def refusal(self, key: ClientKey, model: str | None, now: float) -> Refusal | None:
        return check_limits(key, self.usage_of(key.name), model, now)

    def admit(self, name: str, now: float) -> None:
        self.usage_of(name).admit(now)
        if self._replay is not None:
            self._replay.append(("admit", name, now, 0, 0.0))

    def record(self, record: Mapping[str, Any]) -> None:
        """One finished request's ledger record: its tokens and cost count against its key at its
        end (`ts` + `duration_ms`), as the rebuild from the ledger counts them."""
        name = record.get("key")
        ts = record.get("ts")
        if not isinstance(name, str) or not name or not isinstance(ts, (int, float)):
            return
        tokens = int(record.get("input_tokens") or 0) + int(record.get("output_tokens") or 0)
        cost = record_cost(record, self.prices) or 0.0
        duration = record.get("duration_ms")
        end = float(ts) + (duration / 1000 if isinstance(duration, (int, float)) and duration > 0 else 0.0)
        if tokens or cost:
            self.usage_of(name).record(end, tokens, cost)
            if self._replay is not None:
                self._replay.append(("record", name, end, tokens, cost))

    def start_rebuild(self) -> None:
        """Usage is being rebuilt from the ledger: what happens meanwhile is kept to be replayed."""
        self._replay = []

    def abandon_rebuild(self) -> None:
        """The ledger could not be read: what was counted live stays as it is."""
        self._replay = None

    def adopt(self, rebuilt: Mapping[str, KeyUsage]) -> None:
        """The usage rebuilt from the ledger (records before this start), plus what was counted live
        while it was being read."""
        replay, self._replay = self._replay or [], None
        self.usage = dict(rebuilt)
        for kind, name, at, tokens, cost in sorted(replay, key=lambda e: e[2]):
            if kind == "admit":
                self.usage_of(name).admit(at)
            else:
                self.usage_of(name).record(at, tokens, cost)

    def describe(self, now: float) -> list[dict[str, Any]]:
        """Every key with its state, limits and usage per window; never a key or a hash."""
        rows = []
        for key in self.file.keys if self.file is not None else ():
            state = key_state_refusal(key, now) or "active"
            rows.append({"name": key.name, "state": state, "created": key.created, "expires": key.expires,
                         "models": list(key.models) if key.models is not None else None,
                         "limits": dict(key.limits), "usage": self.usage_of(key.name).snapshot(key.limits, now)})
        return rows
