"""The soak's checks, computed from what was collected (pure functions, no I/O).

Sources, and why each is trusted for what it decides:
  * the simulated backend's request log: which account served each completed answer, its usage,
    its prompt-cache hit, and every fault/limit/refusal it applied — the ground truth upstream;
  * each proxy's event log (events.jsonl): when it took an account out (cooldown / limited /
    disabled) and brought it back — used only to excuse a move ("forced"), and every such outage
    must itself be explained by an upstream failure seen via that proxy (checked separately);
  * the clients' own records: what a Codex user saw after every retry Codex would make.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from datetime import datetime

TOKEN_PAIRS = (  # ledger field, backend usage_totals field
    ("input_tokens", "input_tokens"),
    ("cached_input_tokens", "cached_tokens"),
    ("output_tokens", "output_tokens"),
    ("reasoning_tokens", "reasoning_tokens"),
    ("total_tokens", "total_tokens"),
)
HEALTH_OUT = ("account.cooldown", "account.limited", "account.disabled")
OK_STATUSES = (200, 101)


def iso_ts(value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------- 1. client-visible failures


def usable_at(samples: list[tuple[float, dict]], t: float) -> dict | None:
    """The backend's view (account -> could serve) at time t: the last sample at or before t."""
    if not samples:
        return None
    times = [s[0] for s in samples]
    i = bisect.bisect_right(times, t) - 1
    return samples[max(0, i)][1]


def client_failures(records: list[dict], samples: list[tuple[float, dict]]) -> dict:
    failed = [r for r in records if not r["ok"]]
    could, none = [], []
    for r in failed:
        view = usable_at(samples, r["ended"]) or {}
        (could if any(view.values()) else none).append(r)
    return {
        "turns": len(records),
        "ok": len(records) - len(failed),
        "failed": len(failed),
        "failed_while_some_could_serve": len(could),
        "failed_while_none_could_serve": len(none),
        "examples": [{k: r[k] for k in ("client", "proxy", "transport", "conversation", "index", "ended", "error",
                                         "requests", "redirects", "transport_retries", "turn_retries")}
                     for r in could[:10]],
        "idle_timeouts": sum(r["idle_timeouts"] for r in records),
        "redirects_followed": sum(r["redirects"] for r in records),
        "transport_retries": sum(r["transport_retries"] for r in records),
        "turn_retries": sum(r["turn_retries"] for r in records),
    }


# --------------------------------------------------------------------------- proxy health timelines


class Outages:
    """One proxy's view of when each account was out, from its event log."""

    def __init__(self, events: list[dict]):
        self.spans: dict[str, list[tuple[float, float, str, float]]] = defaultdict(list)  # (start, end, kind, out_since)
        self.disabled: dict[str, list[tuple[float, float, str]]] = defaultdict(list)  # (start, end, reason)
        self.events = [e for e in events if e.get("event") in HEALTH_OUT + ("account.recovered",)]
        open_since: dict[str, float] = {}
        open_disabled: dict[str, tuple[float, str]] = {}
        for e in sorted(self.events, key=lambda e: e["t"]):
            name, t = e.get("account"), e["t"]
            kind = e["event"]
            if kind == "account.recovered":
                open_since.pop(name, None)
                if name in open_disabled:
                    start, reason = open_disabled.pop(name)
                    self.disabled[name].append((start, t, reason))
                    self.spans[name].append((start, t, "disabled", start))
                # a cooling/limited span ends at its `until` or here, whichever comes first
                self.spans[name] = [(s, min(end, t) if k != "disabled" and s <= t <= end else end, k, o)
                                    for s, end, k, o in self.spans[name]]
                continue
            since = open_since.setdefault(name, t)
            if kind == "account.disabled":
                open_disabled.setdefault(name, (t, str(e.get("reason"))))
                continue
            until = iso_ts(e.get("until")) or t
            self.spans[name].append((t, until, "limited" if kind == "account.limited" else "cooling", since))
        for name, (start, reason) in open_disabled.items():
            self.disabled[name].append((start, math.inf, reason))
            self.spans[name].append((start, math.inf, "disabled", start))

    def out_at(self, name: str, t: float, before: float = 0.5, after: float = 1.0):
        """The span that has `name` out at time t, or None. Spans that contain t come first (a
        disabled one before the others, then the one lasting longest); only when none does, a span
        within the slack (the routing decision precedes the upstream log's time by a little; an
        event is written a little after the decision it records)."""
        for slack_before, slack_after in ((0.0, 0.0), (before, after)):
            best = None
            for start, end, kind, since in self.spans.get(name, ()):
                if start - slack_before <= t <= end + slack_after:
                    if best is None or (kind == "disabled") > (best[2] == "disabled") or (
                            (kind == "disabled") == (best[2] == "disabled") and end > best[1]):
                        best = (start, end, kind, since)
            if best is not None:
                return best
        return None


def _for_good(span, t: float, repin_after: float) -> bool:
    """The proxy's rule (core/router.py keeps_pin): a conversation loses its account for good when
    the account is disabled or out for longer than repin_after (so far or still expected)."""
    start, end, kind, since = span
    if kind == "disabled":
        return True
    return max(end - t, t - since) > repin_after


# --------------------------------------------------------------------------- 4. stickiness


def stickiness(entries: list[dict], conv_proxy: dict[str, int], outages: dict[int, Outages],
               repin_after: float) -> dict:
    """Share of turns on their conversation's account, forced moves excluded.

    Units: an HTTP turn (a completed answer), or a WebSocket socket (its upgrade decides the
    account of every turn on it; its turns count; a socket whose prewarm completed is a unit even
    with no turn). A conversation's account is where it was first served (a completed answer).
    A turn elsewhere is a *forced move* when, at the time it was routed, the proxy it came
    through had the conversation's account out (cooling down after a failure,
    limited, or disabled — from that proxy's event log, each outage itself checked against upstream
    failures); when that outage is for good (disabled, or out longer than repin_after — the proxy's
    own rule) the conversation's account becomes the new one, else it is expected back after."""
    upgrades = {e["seq"]: e for e in entries if e["kind"] == "ws-upgrade"}
    units: dict[str, list[tuple[float, str, int, str]]] = defaultdict(list)  # conv -> (t, account, turns, how)
    ws_turns: dict[int, int] = defaultdict(int)
    for e in entries:
        if not e.get("completed"):
            continue
        if e["kind"] == "http":
            conv = e.get("session_id")
            if conv in conv_proxy:
                units[conv].append((e["ts"], e["account"], 1, "http"))
        elif e["kind"] == "ws-msg":
            # a socket whose prewarm (generate: false) completed has served the conversation — the
            # account caches its context — even when its first real turn then fails: a unit of 0 turns
            ws_turns[e.get("upgrade_seq")] += 0 if e.get("generate") is False else 1
    for seq, n in ws_turns.items():
        up = upgrades.get(seq)
        if up is not None and up.get("session_id") in conv_proxy:
            units[up["session_id"]].append((up["ts"], up["account"], n, "ws"))
    first: dict[str, dict] = {}  # each conversation's first request upstream (HTTP turn or WebSocket upgrade)
    for e in sorted(entries, key=lambda e: e["seq"]):
        if e["kind"] in ("http", "ws-upgrade") and e["path"].endswith("/codex/responses"):
            first.setdefault(e.get("session_id"), e)
    on_home = forced = misses = 0
    moves = defaultdict(int)
    miss_causes: dict[str, int] = defaultdict(int)
    pinned_elsewhere: set[str] = set()
    examples = []
    for conv, items in units.items():
        items.sort()
        proxy = conv_proxy[conv]
        home = None
        for t, account, n, how in items:
            if home is None or account == home:
                home = home or account
                on_home += n
                continue
            span = outages[proxy].out_at(home, t) if proxy in outages else None
            if span is not None:
                forced += n
                moves[span[2]] += 1
                if _for_good(span, t, repin_after):
                    home = account
                continue
            misses += n
            f = first.get(conv) or {}
            if conv in pinned_elsewhere or (
                    f.get("kind") == "http" and not f.get("completed") and f.get("account") != home):
                # its first request failed (dropped, cut, stalled: no 307) on an account that never
                # served it, and the proxy keeps the conversation pinned there (serving it by
                # stand-ins meanwhile): every turn off its account follows from that
                cause = "pinned to the account its failed first request went to"
                pinned_elsewhere.add(conv)
            elif how == "ws":
                cause = "WebSocket conversation re-pinned"
            else:
                cause = "other"
            miss_causes[cause] += n
            if len(examples) < 10:
                examples.append({"conversation": conv, "proxy": proxy, "t": t, "home": home, "served_by": account,
                                 "transport": how, "turns": n, "cause": cause})
    total = on_home + forced + misses
    share = on_home / (on_home + misses) if on_home + misses else 1.0
    return {"turns": total, "on_account": on_home, "forced": forced, "misses": misses, "share": share,
            "forced_moves_by_cause": dict(moves), "misses_by_cause": dict(miss_causes), "examples": examples,
            "conversations": len(units)}


# --------------------------------------------------------------------------- 5. prompt cache


def prompt_cache(entries: list[dict]) -> dict:
    """Cached input over input, as served, and as the same answers would have got had every answer of
    a conversation gone to one account (the backend's cache model: per account and prompt_cache_key,
    the input of the last completed answer)."""
    inp = cached = ideal = 0
    last: dict[str, int] = {}
    for e in sorted((e for e in entries if e.get("completed") and e.get("usage")), key=lambda e: e["seq"]):
        u = e["usage"]
        i = int(u["input_tokens"])
        c = int(u["input_tokens_details"]["cached_tokens"])
        key = e.get("prompt_cache_key")
        inp += i
        cached += c
        if isinstance(key, str):
            ideal += min(last.get(key, 0), i)
            last[key] = i
    share = cached / inp if inp else 0.0
    ideal_share = ideal / inp if inp else 0.0
    return {"input_tokens": inp, "cached_tokens": cached, "ideal_cached_tokens": ideal, "share": share,
            "one_account_share": ideal_share, "ratio": share / ideal_share if ideal_share else 0.0}


# --------------------------------------------------------------------------- 6. ledger


def ledger_vs_backend(ledgers: dict[int, list[dict]], backend_accounts: dict[str, dict]) -> dict:
    per: dict[str, dict[str, int]] = defaultdict(lambda: {f: 0 for f, _ in TOKEN_PAIRS})
    records = 0
    for recs in ledgers.values():
        for r in recs:
            records += 1
            row = per[r.get("account") or "(none)"]
            for f, _ in TOKEN_PAIRS:
                row[f] += int(r.get(f) or 0)
    rows, mismatched = [], []
    for name in sorted(set(per) | set(backend_accounts)):
        led = per.get(name, {f: 0 for f, _ in TOKEN_PAIRS})
        back = (backend_accounts.get(name) or {}).get("usage_totals") or {}
        row = {"account": name}
        same = True
        for f, b in TOKEN_PAIRS:
            row[f] = led[f]
            row["backend_" + b] = int(back.get(b, 0))
            same = same and led[f] == int(back.get(b, 0))
        row["equal"] = same
        rows.append(row)
        if not same:
            mismatched.append(name)
    return {"records": records, "rows": rows, "mismatched": mismatched}


# --------------------------------------------------------------------------- 2./3. re-logins, refresh tokens


def relogins(events: dict[int, list[dict]], revoked: str, revoke_at: float, relogin_at: float,
             final_states: dict[int, dict], slack: float = 5.0) -> dict:
    unexpected, expected = [], defaultdict(list)
    for proxy, evs in events.items():
        for e in evs:
            if e.get("event") != "account.disabled":
                continue
            name, t = e.get("account"), e["t"]
            if name == revoked and revoke_at - 1 <= t <= relogin_at + slack:
                expected[proxy].append(t)
            else:
                unexpected.append({"proxy": proxy, "account": name, "t": t, "reason": e.get("reason")})
    still = [{"proxy": p, "account": n, "state": s} for p, states in final_states.items()
             for n, s in states.items() if s == "disabled"]
    return {"unexpected": unexpected, "still_disabled_at_end": still,
            "count": len(unexpected) + len(still),
            "revocation_seen_by": sorted(expected), "detect_delay": {p: round(min(ts) - revoke_at, 1)
                                                                    for p, ts in expected.items()}}


def refresh_presentations(backend_accounts: dict[str, dict]) -> dict:
    reused = {n: a.get("refresh_reused", 0) for n, a in backend_accounts.items()}
    refused = {n: a.get("refresh_after_refusal", 0) for n, a in backend_accounts.items()}
    return {"after_rotation": sum(reused.values()), "after_refusal": sum(refused.values()),
            "count": sum(reused.values()) + sum(refused.values()),
            "by_account": {n: {"after_rotation": reused[n], "after_refusal": refused[n]} for n in reused},
            "refreshes": sum(a.get("refresh_count", 0) for a in backend_accounts.values()),
            "token_calls": sum(a.get("token_calls", 0) for a in backend_accounts.values())}


# --------------------------------------------------------------------------- outages must have a cause


def unexplained_outages(events: dict[int, list[dict]], entries: list[dict], conv_proxy: dict[str, int],
                        window: float = 15.0) -> dict:
    """Every time a proxy took an account out, upstream must have given it a reason via that proxy
    (a fault, an error status, a cut or dropped connection, a usage limit), or, for a disabled
    account, the token endpoint must have refused it."""
    upgrade_conv = {e["seq"]: e.get("session_id") for e in entries if e["kind"] == "ws-upgrade"}
    bad: dict[tuple[int, str], list[float]] = defaultdict(list)
    refusals: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if e["path"] == "/oauth/token":
            if e.get("status") != 200 and e.get("account"):
                refusals[e["account"]].append(e["ts"])
            continue
        conv = e.get("session_id") or upgrade_conv.get(e.get("upgrade_seq"))
        proxy = conv_proxy.get(conv)
        if proxy is None or not e.get("account"):
            continue
        failed = (e.get("fault") is not None or e.get("dropped") or e.get("cut_after") is not None
                  or (e.get("status") is not None and e["status"] not in OK_STATUSES))
        if failed:
            bad[(proxy, e["account"])].append(e["ts"])
    out, total = [], 0
    for proxy, evs in events.items():
        for e in evs:
            if e.get("event") not in HEALTH_OUT:
                continue
            total += 1
            name, t = e.get("account"), e["t"]
            pool = refusals[name] if e["event"] == "account.disabled" else bad[(proxy, name)]
            if not any(t - window <= x <= t + 1.0 for x in pool):
                out.append({"proxy": proxy, "account": name, "t": t, "event": e["event"], "reason": e.get("reason"),
                            "detail": str(e.get("detail") or e.get("last_error") or "")[:200]})
    return {"outages": total, "unexplained": out, "count": len(out)}


# --------------------------------------------------------------------------- resources


def rss_growth(samples: list[tuple[float, int]], t_from: float) -> dict:
    after = [(t, kb) for t, kb in samples if t >= t_from and kb]
    if not after:
        return {"start_mb": None, "end_mb": None, "max_mb": None, "growth_mb": None}
    start, end = after[0][1] / 1024, after[-1][1] / 1024
    return {"start_mb": round(start, 1), "end_mb": round(end, 1), "max_mb": round(max(kb for _, kb in after) / 1024, 1),
            "growth_mb": round(end - start, 1)}
