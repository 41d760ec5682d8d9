"""`scripts/status`: the running proxy's pool at a glance (asks its /admin/accounts endpoint).

    scripts/status [--config mitm.yaml] [--url http://127.0.0.1:8989] [--short | --json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from codex_pool.cli.project import project_root
from codex_pool.core.config import ConfigError, default_config
from codex_pool.storage.config_file import load_config


def _ts(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    d = now - ts
    return _span(d) + " ago" if d >= 0 else "in " + _span(-d)


def _span(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _window(limits: dict | None, which: str) -> dict | None:
    return (limits or {}).get(which) if isinstance((limits or {}).get(which), dict) else None


def rows(accounts: list[dict]) -> list[dict]:
    """One row per served account: what the table, --short and --json show."""
    out = []
    for a in accounts:
        if a.get("state") in ("duplicate", "invalid"):
            continue
        limits = a.get("rate_limits") or {}
        p, s = _window(limits, "primary"), _window(limits, "secondary")
        resets = [w.get("reset_at") for w in (p, s) if w and w.get("reset_at")]
        until = _ts(a.get("until"))
        out.append({
            "account": a["name"],
            "plan": a.get("plan") or "-",
            "state": a.get("state", "?"),
            "until": until,
            "five_hour_used": p.get("used_percent") if p else None,
            "weekly_used": s.get("used_percent") if s else None,
            "resets_at": min(resets) if resets else None,
            "sticky": a.get("sticky_conversations", 0),
            "last_used": _ts(a.get("last_used")),
            "token_expires": _ts(a.get("access_expires_at")),
            "last_refresh": _ts(a.get("last_refresh")),
        })
    return out


def table(data: dict, now: float) -> str:
    rs = rows(data.get("accounts", []))
    header = ["account", "plan", "state", "5h used", "weekly", "resets in", "sticky", "last used", "token expires",
              "refreshed"]
    lines = [header]
    for r in rs:
        state = r["state"] + (f" ({_ago(r['until'], now)})" if r["until"] and r["state"] in ("cooling", "limited") else "")
        lines.append([
            r["account"], r["plan"], state,
            "-" if r["five_hour_used"] is None else f"{r['five_hour_used']:.0f}%",
            "-" if r["weekly_used"] is None else f"{r['weekly_used']:.0f}%",
            "-" if r["resets_at"] is None else _span(r["resets_at"] - now),
            str(r["sticky"]), _ago(r["last_used"], now),
            "-" if r["token_expires"] is None else (_span(r["token_expires"] - now) if r["token_expires"] > now
                                                     else "expired"),
            _ago(r["last_refresh"], now),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
    bad = [a for a in data.get("accounts", []) if a.get("state") in ("duplicate", "invalid")]
    for a in bad:
        text += f"\n! {a.get('file')}: {a.get('state')} — {a.get('reason')}"
    pin = f"; pinned: {data['pinned']}" if data.get("pinned") else ""
    usable = sum(1 for r in rs if r["state"] == "usable")
    return f"{usable}/{len(rs)} accounts usable · policy {data.get('policy')}{pin}\n{text}"


def short(data: dict) -> str:
    rs = rows(data.get("accounts", []))
    usable = sum(1 for r in rs if r["state"] == "usable")
    parts = []
    for r in rs:
        if r["state"] == "usable":
            figure = "-" if r["five_hour_used"] is None else f"{r['five_hour_used']:.0f}%"
            parts.append(f"{r['account']} {figure}")
        else:
            parts.append(f"{r['account']} {r['state']}")
    return f"pool {usable}/{len(rs)} · " + " · ".join(parts)


def fetch(url: str, admin_token: str | None, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url.rstrip("/") + "/admin/accounts")
    if admin_token:
        req.add_header("Authorization", f"Bearer {admin_token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # talk to the proxy directly
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/status", description="The running proxy's pool at a glance.")
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: the project's mitm.yaml)")
    parser.add_argument("--url", default=None, help="the proxy's address (default: http://<listen> from the settings)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--short", action="store_true", help="one line, for status bars")
    form.add_argument("--json", action="store_true", help="machine-readable rows")
    args = parser.parse_args(argv)
    path = args.config or (project_root() / "mitm.yaml")
    try:
        config = load_config(path) if path.exists() else default_config(project_root())
    except ConfigError as e:
        print(f"scripts/status: {e}", file=sys.stderr)
        return 2
    url = args.url or f"http://{config.listen}"
    try:
        data = fetch(url, config.admin_token)
    except urllib.error.HTTPError as e:
        print(f"scripts/status: {url} answered {e.code}: {e.read().decode('utf-8', 'replace')[:300]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"scripts/status: cannot reach the proxy at {url} ({e}); is it running? (scripts/run)", file=sys.stderr)
        return 1
    now = time.time()
    if args.json:
        print(json.dumps({"policy": data.get("policy"), "pinned": data.get("pinned"), "accounts": rows(data["accounts"])},
                         indent=2))
    elif args.short:
        print(short(data))
    else:
        print(table(data, now))
    return 0


if __name__ == "__main__":
    sys.exit(main())
