"""The simulated backend and one mitmdump in front of it, shared by the tests of a module (or made
for one test that needs settings of its own), each test on accounts of its own.

Starting mitmdump costs about a second; most tests only need accounts nothing else has touched.
`ProxyWorld.fresh(["alice", "bob"])` gives a test exactly that: the backend's faults, request log
and settings are put back, any pin is lifted, every file in the pool folder is replaced by new
accounts and the proxy re-reads the folder (/admin/reload) before the test starts. The accounts
are named with a per-test prefix ("t007-alice") so that nothing the proxy remembers by name
(stickiness, health, round-robin position, quota figures) carries over from an earlier test, and a
prefix that sorts after every earlier one so that name-ordered policies start as on a fresh
proxy. `Accounts` maps the short names the tests use to those real names and back.

Tests that need a proxy of their own (other settings, a restart, a flows file, state on disk)
keep using a fresh one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support.flows import RESPONSES, admin_accounts
from tests.support.procs import FakeBackend, Proxy
from tests.support.wait import wait_for


def write_pool_file(folder: Path, name: str, auth: dict, extra: dict | None = None) -> Path:
    """Write `<name>.json` (0600) in one step, so a scan never reads half a file."""
    doc = {**auth, **(extra or {})}
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


class Accounts:
    """One test's accounts in a ProxyWorld, by short name ("alice" ↔ "t007-alice")."""

    def __init__(self, shared: ProxyWorld, prefix: str):
        self.shared, self.prefix = shared, prefix
        self.backend, self.proxy, self.pool_dir = shared.backend, shared.proxy, shared.pool_dir

    def __getitem__(self, short: str) -> str:
        return self.prefix + short

    def short(self, real: str | None) -> str | None:
        return real[len(self.prefix):] if real and real.startswith(self.prefix) else real

    def add(self, short: str, **figures: Any) -> dict:
        """A new account on the backend (not yet in the pool); its auth.json."""
        return self.backend.add_account(self[short], **figures)

    def install(self, short: str, auth: dict | None = None, extra: dict | None = None) -> Path:
        """Put the account's auth.json (a new account's when not given) into the pool folder."""
        return write_pool_file(self.pool_dir, self[short], auth if auth is not None else self.add(short), extra)

    def file(self, short: str) -> Path:
        return self.pool_dir / f"{self[short]}.json"

    def reload(self) -> dict:
        r = self.proxy.http.post("/admin/reload")
        assert r.status_code == 200, r.text
        return r.json()

    def fault(self, kind: str, account: str | None = "alice", **params: Any) -> Any:
        spec: dict[str, Any] = {"kind": kind, **params}
        if account is not None:
            spec["account"] = self[account]
        return self.backend.fault(**spec)

    def served(self) -> list[str | None]:
        """Short names of the accounts that served model turns, in order."""
        return [self.short(r["account"]) for r in self.backend.requests() if r["path"].startswith(RESPONSES)]

    def states(self) -> dict[str, dict]:
        """This test's /admin/accounts rows by short name."""
        return {self.short(name): row for name, row in admin_accounts(self.proxy).items() if name.startswith(self.prefix)}

    def sent(self) -> dict[str, dict]:
        """The backend's view of this test's accounts (turns, usage, refreshes…) by short name."""
        return {self.short(name): a for name, a in self.backend.state()["accounts"].items() if name.startswith(self.prefix)}


class ProxyWorld:
    """`settings`: mitm.yaml lines besides pool_dir, data_dir and token_url (the backend's)."""

    def __init__(self, root: Path, settings: str = "", scripts: list[Path] | None = None):
        self.pool_dir = root / "pool"
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        self.backend = FakeBackend([], self.pool_dir)
        try:
            self.backend_config = self.backend.control("GET", "config")
            self.proxy = Proxy(self.backend.url, root / "proxy",
                               f"pool_dir: {self.pool_dir}\ndata_dir: data\ntoken_url: {self.backend.url}/oauth/token\n"
                               f"{settings}", scripts=scripts)
        except BaseException:
            self.backend.stop()
            raise
        self.data_dir = root / "proxy" / "data"
        self.tests = 0

    def fresh(self, names: list[str] | tuple[str, ...] = ("alice", "bob")) -> Accounts:
        """A clean slate holding just `names` (new accounts, usable, nothing routed yet)."""
        self.tests += 1
        accounts = Accounts(self, f"t{self.tests:03d}-")
        self.backend.control("DELETE", "faults")
        self.backend.control("POST", "config", self.backend_config)
        pinned = self.proxy.http.get("/admin/accounts").json()["pinned"]
        if pinned:
            assert self.proxy.http.post(f"/admin/accounts/{pinned}/unpin").status_code == 200
        for short in names:
            accounts.install(short)
        want = (len(names), len(names), {})

        def only_this_tests_accounts() -> dict | None:
            # The previous test's last token refresh may still be writing its file back (a temp file
            # that vanishes, or the file coming back): clear until the pool holds only ours.
            for path in self.pool_dir.iterdir():
                if not path.name.startswith(accounts.prefix):
                    path.unlink(missing_ok=True)
            got = accounts.reload()
            return got if (got["accounts"], got["usable"], got["invalid"]) == want else None
        wait_for(only_this_tests_accounts, 15, f"the pool to hold only {names}")
        self.backend.clear_requests()
        return accounts

    def stop(self) -> None:
        self.proxy.stop()
        self.backend.stop()
