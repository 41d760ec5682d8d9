"""The pool-day soak: a compressed day of Codex-like traffic through two proxies sharing one pool
folder, against the simulated backend, with token expiries, usage limits that reset, injected
faults, and a revoked refresh token that a fresh login later replaces."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from soak_lib import analysis as A
from soak_lib import timeline as TL
from soak_lib.client import SoakClient, record_dict
from soak_lib.procs import start_backend, start_proxy

DESCRIPTION = __doc__
EPILOG = """\
what it prints and checks (exit 1 when a goal is missed, 2 when the run could not be set up):
  client-visible failures while an account could serve   turns that finally failed (after every retry
                                                          Codex 0.169.0 makes) while the backend had an
                                                          account neither limited nor revoked   goal 0
  accounts asking for a re-login that shouldn't           disabled on a proxy, other than the revoked
                                                          account between revocation and re-login  goal 0
  refresh tokens presented twice                          to the token endpoint, after it rotated or
                                                          refused them (a retry after a 5xx is fine) goal 0
  turns on their conversation's account                   forced moves excluded (account cooling after a
                                                          failure, limited, or disabled on that proxy)  >= 99 %
  prompt-cache share vs one account                       cached/input as served over cached/input had each
                                                          conversation stayed on one account   >= 0.95x
  ledger = backend tokens                                 both proxies' ledgers vs the backend, per account,
                                                          five token counts, exactly
  secrets in any output                                   every token the backend issued, searched in every
                                                          log, event log, ledger, state file and this report  goal 0
  outages without an upstream cause, client idle timeouts, proxy RSS growth and event-loop lag
  and whether the day really happened (refreshes, limits, faults, revocation, re-login)

examples:
  scripts/soak                       # the 2-minute form (CI runs it through scripts/test)
  scripts/soak --minutes 10 --json soak.json     # a long form
"""

SHARE_GOAL = 0.99
CACHE_GOAL = 0.95
LAG_P99_GOAL_MS = 100.0
LAG_MAX_GOAL_MS = 1000.0
RSS_GROWTH_GOAL_MB = 25.0
DRAIN_GRACE = 45.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="soak", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="length of the day (default 2: the CI form)")
    p.add_argument("--clients", type=int, default=10, help="concurrent Codex-like clients (default 10)")
    p.add_argument("--ws-share", type=float, default=0.3, help="share of clients on WebSocket (default 0.3)")
    p.add_argument("--seed", type=int, default=11, help="seed of the timeline and the clients (default 11)")
    p.add_argument("--json", metavar="PATH", help="write every figure (and the timeline) as JSON to PATH")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (pool, data dirs, logs)")
    p.add_argument("--think", default="0.5,3.5", help="user think time between turns, min,max seconds")
    a = p.parse_args(argv)
    if a.minutes <= 0 or a.clients < 1:
        p.error("--minutes must be > 0 and --clients >= 1")
    lo, hi = (float(x) for x in a.think.split(","))
    a.think = (lo, hi)
    return a


def log(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def proxy_settings(pool: Path, backend: str, repin_after: float) -> str:
    return (f"pool_dir: {pool}\n"
            "data_dir: data\n"
            f"token_url: {backend}/oauth/token\n"
            "policy: usage_balanced\n"
            f"repin_after_minutes: {repin_after / 60:g}\n"
            "first_byte_timeout_seconds: 3\n"
            "stream_idle_timeout_seconds: 3\n"
            "usage_poll_seconds: 30\n")


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.seconds = args.minutes * 60.0
        self.tl = TL.build(self.seconds, args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="codex-pool-soak-"))
        self.pool = self.tmp / "pool"
        self.backend = None
        self.backend_url = ""
        self.proxies: list = []
        self.proxy_urls: list[str] = []
        self.lag_files: list[Path] = []
        self.records: list = []
        self.conversations: dict[str, dict] = {}
        self.backend_samples: list[tuple[float, dict]] = []
        self.admin_samples: dict[int, list[tuple[float, dict]]] = {0: [], 1: []}
        self.rss: dict[int, list[tuple[float, int]]] = {0: [], 1: []}
        self.t0 = 0.0
        self.clients: list[SoakClient] = []

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        py = sys.executable
        names = TL.NAMES
        self.backend, self.backend_url = start_backend(py, self.tmp, self.pool, names,
                                                       [self.tl.ttls[n] for n in names],
                                                       [self.tl.ages[n] for n in names], stream_delay=0.02)
        http = httpx.Client(base_url=self.backend_url, timeout=10, trust_env=False)
        # quota moves slowly (limits come from the schedule), answers stream over ~0.2 s
        http.post("/_fake/config", json={"primary_step": 0.02, "secondary_step": 0.005}).raise_for_status()
        http.close()
        for i in range(2):
            lag = self.tmp / f"lag-{i}.json"
            proc, url = start_proxy(py, self.tmp / f"proxy{i}", self.backend_url,
                                    proxy_settings(self.pool, self.backend_url, self.tl.repin_after), lag)
            self.proxies.append(proc)
            self.proxy_urls.append(url)
            self.lag_files.append(lag)
        deadline = time.time() + 20
        for url in self.proxy_urls:
            while True:
                try:
                    rows = httpx.get(url + "/admin/accounts", timeout=5, trust_env=False).json()["accounts"]
                    if sum(1 for r in rows if r.get("state") == "usable") == len(names):
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"proxy {url} did not load the {len(names)} accounts")
                time.sleep(0.2)

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()
        if self.backend is not None:
            self.backend.stop()

    # ------------------------------------------------------------------ the day

    async def day(self) -> None:
        a = self.args
        async with httpx.AsyncClient(base_url=self.backend_url, timeout=10, trust_env=False) as fake:
            r = await fake.post("/_fake/schedule", json={"actions": self.tl.actions})
            r.raise_for_status()
            self.t0 = time.time()
            deadline = self.t0 + self.seconds
            n_ws = round(a.clients * a.ws_share)
            ws_every = a.clients / n_ws if n_ws else 0
            ws_idx = {int(i * ws_every + ws_every / 2) for i in range(n_ws)} if n_ws else set()
            for i in range(a.clients):
                transport = "ws" if i in ws_idx else "http"
                self.clients.append(SoakClient(i, i % 2, self.proxy_urls[i % 2], transport, a.seed * 1000 + i,
                                               self.records, self.conversations, a.think))
            tasks = [asyncio.create_task(c.run(deadline)) for c in self.clients]
            sampler = asyncio.create_task(self._sample(fake, deadline))
            await asyncio.sleep(0)
            done_at = deadline + DRAIN_GRACE
            while time.time() < done_at and not all(t.done() for t in tasks):
                await asyncio.sleep(0.5)
            for t in tasks:
                if not t.done():
                    t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, res in enumerate(results):
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    log(f"client {i} crashed: {type(res).__name__}: {res}")
            now = time.time()
            for rec in self.records:  # turns still running when the drain grace ran out
                if rec.ended == 0.0:
                    rec.ended, rec.ok, rec.error, rec.fatal = now, False, "still running at the end", "unfinished"
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            await self._sample_once(fake)

    async def _sample(self, fake: httpx.AsyncClient, deadline: float) -> None:
        last_progress = 0.0
        while True:
            await self._sample_once(fake)
            now = time.time()
            if now - last_progress >= 10:
                last_progress = now
                ok = sum(1 for r in self.records if r.ok)
                bad = sum(1 for r in self.records if r.ended and not r.ok)
                log(f"{now - self.t0:5.0f}/{self.seconds:.0f} s: {ok} turns ok, {bad} failed, "
                    f"{len(self.conversations)} conversations")
            await asyncio.sleep(1.0)

    async def _sample_once(self, fake: httpx.AsyncClient) -> None:
        now = time.time()
        try:
            st = (await fake.get("/_fake/state")).json()
            view = {n: not a["limit_reached"] and not a["revoked"] for n, a in st["accounts"].items()}
            self.backend_samples.append((now, view))
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        for i, url in enumerate(self.proxy_urls):
            kb = self.proxies[i].rss_kb()
            if kb:
                self.rss[i].append((now, kb))
            try:
                async with httpx.AsyncClient(timeout=5, trust_env=False) as c:
                    rows = (await c.get(url + "/admin/accounts")).json()["accounts"]
                self.admin_samples[i].append((now, {r["name"]: r.get("state") for r in rows}))
            except (httpx.HTTPError, ValueError, KeyError):
                pass

    # ------------------------------------------------------------------ after the day

    def collect(self) -> dict:
        """Everything the checks need; proxies are stopped here (their ledgers and event logs flushed)."""
        time.sleep(3)  # the ledgers' last batch (ledger_flush_seconds 2)
        http = httpx.Client(base_url=self.backend_url, timeout=30, trust_env=False)
        final_admin = {}
        for i, url in enumerate(self.proxy_urls):
            try:
                rows = httpx.get(url + "/admin/accounts", timeout=10, trust_env=False).json()["accounts"]
                final_admin[i] = {r["name"]: r.get("state") for r in rows}
            except (httpx.HTTPError, ValueError, KeyError):
                final_admin[i] = {}
        for p in self.proxies:
            p.stop()
        state = http.get("/_fake/state").json()
        raw = http.get("/_fake/requests").json()["requests"]
        schedule = http.get("/_fake/schedule").json()
        tokens = http.get("/_fake/tokens").json()
        http.close()
        entries = [_entry(e) for e in raw]
        del raw
        events, ledgers = {}, {}
        for i in range(2):
            data = self.tmp / f"proxy{i}" / "data"
            events[i] = _read_events(data)
            ledgers[i] = _read_ledger(data / "ledger")
        lag = {}
        for i, f in enumerate(self.lag_files):
            try:
                lag[i] = json.loads(f.read_text())
            except (OSError, ValueError):
                lag[i] = {}
        return {"state": state, "entries": entries, "schedule": schedule, "tokens": tokens, "events": events,
                "ledgers": ledgers, "lag": lag, "final_admin": final_admin}


def _entry(e: dict) -> dict:
    """The fields of a backend log entry the checks use (never its headers: they hold tokens)."""
    keep = ("seq", "ts", "kind", "method", "path", "account", "status", "session_id", "prompt_cache_key", "fault",
            "completed", "usage", "generate", "upgrade_seq", "cut_after", "dropped", "msg_type", "refresh_error",
            "auth_error")
    out = {k: e.get(k) for k in keep}
    rid = None
    for name, value in e.get("headers") or []:
        if name.lower() == "x-client-request-id":
            rid = value
    out["rid"] = rid
    return out


def _read_events(data: Path) -> list[dict]:
    out = []
    files = sorted(data.glob("events.jsonl*"), key=lambda p: (len(p.name), p.name), reverse=True)
    for f in files:
        for line in f.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            e["t"] = A.iso_ts(e.get("ts")) or 0.0
            out.append(e)
    out.sort(key=lambda e: e["t"])
    return out


def _read_ledger(folder: Path) -> list[dict]:
    from codex_pool.storage.ledger_store import LedgerStore

    return list(LedgerStore(folder).query())


# --------------------------------------------------------------------------- secrets


def secret_needles(tokens: dict) -> set[str]:
    """What must never appear: each refresh token, and each JWT's signature (the part that makes
    it usable; header and claims are not secret)."""
    out = set()
    for t in tokens.get("refresh_tokens", []):
        out.add(t)
    for kind in ("access_tokens", "id_tokens"):
        for t in tokens.get(kind, []):
            parts = t.split(".")
            if len(parts) == 3 and len(parts[2]) >= 16:
                out.add(parts[2])
    return out


RUN = re.compile(rb"[A-Za-z0-9_\-]{16,}")


def scan(data: bytes, needles: set[str]) -> int:
    hits = 0
    for m in RUN.finditer(data):
        s = m.group().decode()
        if s in needles:
            hits += 1
            continue
        if s.startswith("rt_") or len(s) > 43:  # a token glued to other characters
            if any(n in s for n in needles if len(n) <= len(s)):
                hits += 1
    return hits


def scan_tree(root: Path, needles: set[str], skip: set[Path]) -> dict[str, int]:
    found = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(path == s or s in path.parents for s in skip):
            continue
        try:
            n = scan(path.read_bytes(), needles)
        except OSError:
            continue
        if n:
            found[str(path.relative_to(root))] = n
    return found


# --------------------------------------------------------------------------- the report


def evaluate(run: Run, got: dict) -> dict:
    tl = run.tl
    done = {a["do"] + ":" + str(a.get("account")): a for a in got["schedule"]["done"] if a["do"] in ("revoke", "login")}
    revoke_at = done.get(f"revoke:{tl.revoked}", {}).get("ran_at", run.t0 + tl.revoke_at)
    relogin_at = done.get(f"login:{tl.revoked}", {}).get("ran_at", run.t0 + tl.relogin_at)
    records = [record_dict(r) for r in run.records]
    conv_proxy = {c: v["proxy"] for c, v in run.conversations.items()}
    accounts = got["state"]["accounts"]
    entries = got["entries"]
    outages = {i: A.Outages(evs) for i, evs in got["events"].items()}

    fails = A.client_failures(records, run.backend_samples)
    relog = A.relogins(got["events"], tl.revoked, revoke_at, relogin_at, got["final_admin"])
    refresh = A.refresh_presentations(accounts)
    sticky = A.stickiness(entries, conv_proxy, outages, tl.repin_after)
    cache = A.prompt_cache(entries)
    ledger = A.ledger_vs_backend(got["ledgers"], accounts)
    causes = A.unexplained_outages(got["events"], entries, conv_proxy)
    warm = run.t0 + 0.25 * run.seconds
    rss = {i: {**A.rss_growth(run.rss[i], warm),
               "series_mb": [(round(t - run.t0), round(kb / 1024, 1)) for t, kb in run.rss[i][::15]]}
           for i in run.rss}
    recovered = {}
    for i, samples in run.admin_samples.items():
        back = [t for t, states in samples if t >= relogin_at and states.get(tl.revoked) == "usable"]
        recovered[i] = round(back[0] - relogin_at, 1) if back else None

    upstream_429 = sum(1 for e in entries if e.get("status") == 429 and e["path"].startswith("/backend-api/codex"))
    limited_events = sum(1 for evs in got["events"].values() for e in evs if e.get("event") == "account.limited")
    faults_applied = sum(a.get("faults_applied", 0) for a in accounts.values())
    ws_turns = sum(1 for e in entries if e["kind"] == "ws-msg" and e.get("completed") and e.get("generate") is not False)
    http_turns = sum(1 for e in entries if e["kind"] == "http" and e.get("completed"))
    return {
        "t0": run.t0, "revoke_at": revoke_at, "relogin_at": relogin_at,
        "failures": fails, "relogins": relog, "refresh": refresh, "stickiness": sticky, "cache": cache,
        "ledger": ledger, "outages": causes, "rss": rss, "lag": got["lag"], "recovered_after_relogin": recovered,
        "day": {"http_turns": http_turns, "ws_turns": ws_turns, "conversations": len(run.conversations),
                "refreshes": refresh["refreshes"], "token_calls": refresh["token_calls"],
                "faults_applied": faults_applied, "faults_scheduled": len(tl.faults) + 2,
                "upstream_429": upstream_429, "limited_events": limited_events,
                "revocation_seen_by": relog["revocation_seen_by"], "relogin_recovered": recovered,
                "ws_fell_back": sum(1 for c in run.clients if c.fell_back_to_http),
                "models_status": sorted({c.models_status for c in run.clients if c.models_status is not None})},
    }


def rows_of(run: Run, res: dict) -> list[tuple[str, str, str, str, bool]]:
    """(key, check, figure, goal, passed)."""
    f, sticky, cache = res["failures"], res["stickiness"], res["cache"]
    rows = [
        ("failures", "client-visible failures while an account could serve",
         f"{f['failed_while_some_could_serve']} of {f['turns']} turns"
         + (f" ({f['failed_while_none_could_serve']} more while none could)" if f["failed_while_none_could_serve"] else ""),
         "0", f["failed_while_some_could_serve"] == 0),
        ("relogins", "accounts asking for a re-login that shouldn't", str(res["relogins"]["count"]), "0",
         res["relogins"]["count"] == 0),
        ("refresh_twice", "refresh tokens presented twice",
         f"{res['refresh']['count']} (after rotation {res['refresh']['after_rotation']}, after refusal "
         f"{res['refresh']['after_refusal']}) of {res['refresh']['token_calls']} token calls",
         "0", res["refresh"]["count"] == 0),
        ("stickiness", "turns on their conversation's account, forced moves excluded",
         f"{100 * sticky['share']:.2f} % ({sticky['on_account']} of {sticky['on_account'] + sticky['misses']}; "
         f"{sticky['forced']} forced)" + ("; off: " + ", ".join(f"{n} {c}" for c, n in sticky["misses_by_cause"].items())
                                          if sticky["misses"] else ""),
         f">= {100 * SHARE_GOAL:.0f} %", sticky["share"] >= SHARE_GOAL),
        ("cache", "prompt-cache share vs the same conversations on one account",
         f"{cache['ratio']:.3f}x ({100 * cache['share']:.1f} % vs {100 * cache['one_account_share']:.1f} %)",
         f">= {CACHE_GOAL:.2f}x", cache["ratio"] >= CACHE_GOAL),
        ("ledger", "ledger tokens = backend tokens, per account",
         "equal for " + ", ".join(r["account"] for r in res["ledger"]["rows"] if r["equal"])
         + (f"; DIFFERENT for {', '.join(res['ledger']['mismatched'])}" if res["ledger"]["mismatched"] else ""),
         "exactly", not res["ledger"]["mismatched"]),
        ("secrets", "secrets in any output (logs, event logs, ledgers, state, this report)",
         f"{res['secrets']['count']} (the same scan finds {res['secrets'].get('found_in_pool_files', 0)} "
         f"in the pool files, where they belong)", "0", res["secrets"]["count"] == 0
         and res["secrets"].get("found_in_pool_files", 1) > 0),
        ("outages", "account outages without an upstream cause",
         f"{res['outages']['count']} of {res['outages']['outages']}", "0", res["outages"]["count"] == 0),
        ("idle_timeouts", "client stream idle timeouts (the proxy's watchdog acts first)", str(f["idle_timeouts"]), "0",
         f["idle_timeouts"] == 0),
    ]
    for i in sorted(res["rss"]):
        r = res["rss"][i]
        ok = r["growth_mb"] is not None and r["growth_mb"] <= RSS_GROWTH_GOAL_MB
        rows.append((f"rss_{i}", f"proxy {i} RSS growth (from 25 % of the day to its end)",
                     f"{r['growth_mb']:+.1f} MB ({r['start_mb']} → {r['end_mb']} MB, max {r['max_mb']})"
                     if r["growth_mb"] is not None else "n/a", f"<= {RSS_GROWTH_GOAL_MB:.0f} MB", ok))
    for i in sorted(res["lag"]):
        lag = res["lag"][i] or {}
        p99, mx = lag.get("p99_ms"), lag.get("max_ms")
        ok = p99 is not None and p99 <= LAG_P99_GOAL_MS and mx <= LAG_MAX_GOAL_MS
        rows.append((f"lag_{i}", f"proxy {i} event-loop lag p50 / p99 / max",
                     f"{lag.get('p50_ms')} / {p99} / {mx} ms ({lag.get('count')} samples)",
                     f"p99 <= {LAG_P99_GOAL_MS:.0f}, max <= {LAG_MAX_GOAL_MS:.0f} ms", ok))
    d = res["day"]
    exercised = (d["http_turns"] > 0 and d["ws_turns"] > 0 and d["refreshes"] > 0 and d["faults_applied"] > 0
                 and d["limited_events"] > 0 and len(d["revocation_seen_by"]) == 2
                 and all(v is not None for v in d["relogin_recovered"].values()) and f["redirects_followed"] > 0)
    rows.append(("day", "the day happened: turns, refreshes, faults, limits, revocation, re-login, failovers",
                 f"{d['http_turns']} SSE + {d['ws_turns']} WS turns in {d['conversations']} conversations; "
                 f"{d['refreshes']} refreshes; {d['faults_applied']} faults; {d['limited_events']} limits seen; "
                 f"revocation seen by proxies {d['revocation_seen_by']}; re-login back after "
                 f"{d['relogin_recovered']} s; {f['redirects_followed']} 307s followed",
                 "all > 0", exercised))
    return rows


def render(run: Run, res: dict, rows) -> str:
    a = run.args
    lines = [f"codex-pool soak: {a.minutes:g} min, {a.clients} clients, 2 proxies, 4 accounts, seed {a.seed}", ""]
    lines.append("| check | figure | goal | |")
    lines.append("|---|---|---|---|")
    for _key, name, fig, goal, ok in rows:
        lines.append(f"| {name} | {fig} | {goal} | {'pass' if ok else 'FAIL'} |")
    f = res["failures"]
    lines.append("")
    lines.append(f"turns: {f['ok']} ok, {f['failed']} failed; retries: {f['transport_retries']} transport, "
                 f"{f['turn_retries']} turn-level, {f['redirects_followed']} redirects followed; forced moves by "
                 f"cause: {res['stickiness']['forced_moves_by_cause']}")
    for ex in f["examples"][:5]:
        lines.append(f"  failed: client {ex['client']} proxy {ex['proxy']} {ex['transport']} turn {ex['index']}: {ex['error']}")
    for ex in res["stickiness"]["examples"][:5]:
        lines.append(f"  off its account: conversation {ex['conversation'][:13]}… on proxy {ex['proxy']} "
                     f"({ex['transport']}) at +{ex['t'] - run.t0:.1f} s: home {ex['home']}, served by {ex['served_by']} "
                     f"[{ex['cause']}]")
    for ex in res["outages"]["unexplained"][:5]:
        lines.append(f"  outage without cause: proxy {ex['proxy']} {ex['event']} {ex['account']} at "
                     f"+{ex['t'] - run.t0:.1f} s ({ex['reason']}: {ex['detail']})")
    for ex in res["relogins"]["unexpected"][:5]:
        lines.append(f"  re-login asked: proxy {ex['proxy']} {ex['account']} at +{ex['t'] - run.t0:.1f} s ({ex['reason']})")
    for ex in res["relogins"]["still_disabled_at_end"][:5]:
        lines.append(f"  still disabled at the end: proxy {ex['proxy']} {ex['account']}")
    if res["ledger"]["mismatched"]:
        for r in res["ledger"]["rows"]:
            if not r["equal"]:
                lines.append(f"  ledger {r['account']}: " + ", ".join(
                    f"{lf} {r[lf]} vs {r['backend_' + bf]}" for lf, bf in A.TOKEN_PAIRS))
    if res["secrets"]["files"]:
        lines.append(f"  secrets found in: {res['secrets']['files']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)
    log(f"day of {run.seconds:.0f} s in {run.tmp}; timeline: {json.dumps(run.tl.as_dict())}")
    try:
        try:
            run.start()
        except Exception as e:  # noqa: BLE001
            log(f"could not set up: {e}")
            return 2
        log(f"backend {run.backend_url}, proxies {run.proxy_urls}")
        asyncio.run(run.day())
        got = run.collect()
        run.backend.stop()
        res = evaluate(run, got)
        needles = secret_needles(got["tokens"])
        del got["tokens"]
        # the account files hold tokens by design; everything else in the pool folder (locks, spent-token
        # marks, temp files) and everywhere else must not
        account_files = {run.pool / f"{n}.json" for n in TL.NAMES}
        files = scan_tree(run.tmp, needles, skip=account_files)
        control = sum(scan(p.read_bytes(), needles) for p in account_files if p.exists())  # the scan finds them
        rows = rows_of(run, {**res, "secrets": {"count": 0, "files": {}}})
        report = render(run, {**res, "secrets": {"count": 0, "files": {}}}, rows)
        doc = {"args": {k: v for k, v in vars(args).items()}, "timeline": run.tl.as_dict(), "results": res,
               "records": [record_dict(r) for r in run.records], "conversations": run.conversations,
               "upstream_log": got["entries"], "events": got["events"]}
        own = scan(report.encode(), needles) + scan(json.dumps(doc, default=str).encode(), needles)
        res["secrets"] = {"count": sum(files.values()) + own, "files": files, "in_report": own,
                          "needles": len(needles), "found_in_pool_files": control}
        rows = rows_of(run, res)
        report = render(run, res, rows)
        print(report, flush=True)
        if args.json:
            doc["results"] = res
            doc["rows"] = [{"key": k, "check": n, "figure": fig, "goal": g, "pass": ok} for k, n, fig, g, ok in rows]
            Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
        return 0 if all(ok for *_, ok in rows) else 1
    finally:
        run.stop()
        if args.keep_tmp:
            log(f"kept {run.tmp}")
        else:
            shutil.rmtree(run.tmp, ignore_errors=True)
