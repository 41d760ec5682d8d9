"""The compressed day's events, as the simulated backend's schedule (POST /_fake/schedule).

Everything scales with the run length T (seconds) and is drawn from the seed:
  * access tokens live 60–120 s, a different lifetime per account, the first ones issued part way
    through their life (staggered expiries; each proxy refreshes at half-life);
  * usage limits that reset: brief ones (half of repin_after: conversations are served by a stand-in
    and come back) and long ones (twice repin_after: conversations move for good), one at a time;
  * one account's refresh token is revoked at ~0.25–0.3 T (its access tokens stay valid until they
    expire), and a fresh login replaces its pool file at ~0.6–0.75 T;
  * a steady trickle of faults on model turns (about 5 a minute): 5xx answers (some with
    Retry-After), a rate-limit 429 with Retry-After, streams cut after a few events, dropped
    connections, turns that hang before the first byte, streams that stall midway, WebSocket error
    frames, `response.failed`; plus one transient 500 and one slow answer from the token endpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NAMES = ["alice", "bob", "carol", "dave"]
TTLS = [60, 75, 90, 120]

# (weight, fault spec without account) — HTTP-only kinds use match "http" (see README: a WebSocket
# turn has no proxy watchdog, so stalls are injected on HTTP streams only)
FAULTS = [
    (15, {"kind": "status", "status": 500}),
    (10, {"kind": "status", "status": 502}),
    (10, {"kind": "status", "status": 503, "retry_after": 2}),
    (5, {"kind": "status", "status": 429, "retry_after": 2, "type": "rate_limit_exceeded",
         "code": "rate_limit_exceeded", "match": "http"}),
    (15, {"kind": "cut", "after": 3}),
    (10, {"kind": "drop"}),
    (10, {"kind": "hang", "seconds": 60, "match": "http"}),
    (10, {"kind": "slow", "seconds": 8, "match": "http"}),
    (10, {"kind": "ws_error", "status": 503}),
    (5, {"kind": "failed", "code": "server_error",
         "message": "An error occurred while processing your request. Please try again in 1s."}),
]


@dataclass
class Timeline:
    seconds: float
    repin_after: float  # seconds (the proxy's repin_after_minutes × 60)
    ttls: dict[str, float]
    ages: dict[str, float]
    revoked: str
    revoke_at: float
    relogin_at: float
    limits: list[dict] = field(default_factory=list)  # {account, at, seconds, kind: brief|long}
    faults: list[dict] = field(default_factory=list)  # {at, fault}
    actions: list[dict] = field(default_factory=list)  # the backend schedule

    def as_dict(self) -> dict:
        return {
            "seconds": self.seconds, "repin_after": self.repin_after, "ttls": self.ttls, "ages": self.ages,
            "revoked": self.revoked, "revoke_at": self.revoke_at, "relogin_at": self.relogin_at,
            "limits": self.limits, "faults": len(self.faults),
            "fault_kinds": _count(f["fault"]["kind"] + (f"_{f['fault']['status']}" if "status" in f["fault"] else "")
                                  for f in self.faults),
        }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


def build(seconds: float, seed: int) -> Timeline:
    rng = random.Random(seed)
    T = float(seconds)
    short = T <= 200
    repin = 30.0 if short else 60.0
    ttls = dict(zip(NAMES, rng.sample(TTLS, len(TTLS))))
    ages = {n: round(rng.uniform(0, 0.4) * ttls[n], 1) for n in NAMES}
    # the shortest-lived account is revoked: both proxies find out within half a lifetime
    revoked = min(NAMES, key=lambda n: ttls[n])
    revoke_at = round((0.25 if short else 0.3) * T, 1)
    relogin_at = round((0.75 if short else 0.6) * T, 1)
    tl = Timeline(T, repin, ttls, ages, revoked, revoke_at, relogin_at)

    # usage limits, one at a time, alternating brief / long, never on the revoked account
    n_limits = 2 if short else max(2, round(T / 150))
    others = [n for n in NAMES if n != revoked]
    span0, span1 = 0.1 * T, 0.9 * T
    slot = (span1 - span0) / n_limits
    for i in range(n_limits):
        kind = "brief" if i % 2 == 0 else "long"
        dur = repin * (0.5 if kind == "brief" else 2.0)
        dur = min(dur, 0.8 * slot)
        at = span0 + i * slot + rng.uniform(0, max(0.0, slot - dur - 1))
        tl.limits.append({"account": rng.choice(others), "at": round(at, 1), "seconds": round(dur, 1), "kind": kind})

    # the fault trickle
    n_faults = max(4, round(5 * T / 60))
    weights = [w for w, _ in FAULTS]
    for _ in range(n_faults):
        _, spec = rng.choices(FAULTS, weights)[0]
        at = round(rng.uniform(0.05 * T, 0.92 * T), 1)
        tl.faults.append({"at": at, "fault": {**spec, "account": rng.choice(NAMES)}})
    tl.faults.sort(key=lambda f: f["at"])

    acts = tl.actions
    for f in tl.faults:
        acts.append({"at": f["at"], "do": "fault", "fault": f["fault"]})
    for lim in tl.limits:
        acts.append({"at": lim["at"], "do": "limit", "account": lim["account"], "seconds": lim["seconds"]})
    acts.append({"at": revoke_at, "do": "revoke", "account": revoked, "refresh_only": True})
    acts.append({"at": relogin_at, "do": "login", "account": revoked, "write": True})
    transient_on = rng.choice(others)
    acts.append({"at": round(0.45 * T, 1), "do": "fault",
                 "fault": {"kind": "refresh_error", "status": 500, "code": "server_error", "account": transient_on}})
    acts.append({"at": round(0.8 * T, 1), "do": "fault",
                 "fault": {"kind": "refresh_slow", "seconds": 2, "account": rng.choice(others)}})
    acts.sort(key=lambda a: a["at"])
    return tl
