"""The registry's view of each account: the state admin views show, and what to do about it."""

import json
import time
from pathlib import Path

from codex_pool.core.accounts import AccountRegistry
from codex_pool.core.auth_file import parse_auth
from codex_pool.core.outcome import Verdict
from codex_pool.core.pool_scan import PoolScan
from tests.support.tokens import make_auth


def registry(now, **expired_by_name):
    accounts = {}
    for name, (expired, refresh) in expired_by_name.items():
        doc = make_auth(f"acct-{name}", exp=now - 10 if expired else None, refresh_token="rt" if refresh else None)
        accounts[name] = parse_auth(json.dumps(doc).encode(), Path(f"/pool/{name}.json"))
    reg = AccountRegistry()
    reg.apply_scan(PoolScan(accounts=accounts), now)
    return reg


def test_states_say_what_to_do_and_never_advise_a_login_while_a_refresh_may_work():
    """#11.7: a disabled account whose token also ran out showed as `expired`; an account merely
    waiting for its refresh said "replace X.json with a fresh login"."""
    now = time.time()
    reg = registry(now, waiting=(True, True), gone=(True, True), bare=(True, False), fine=(False, True))
    reg.health.apply("gone", Verdict("auth", "unauthorized", disable_as="reauth_required"), now)
    rows = {r["name"]: r for r in reg.describe(now, {})}
    assert rows["waiting"]["state"] == "refreshing" and "fresh login" not in rows["waiting"]["reason"]
    assert rows["gone"]["state"] == "disabled"
    assert "disabled (reauth_required)" in rows["gone"]["reason"] and "replace gone.json" in rows["gone"]["reason"]
    assert rows["bare"]["state"] == "expired" and "replace it with a fresh login" in rows["bare"]["reason"]
    assert rows["fine"]["state"] == "usable" and rows["fine"]["reason"] is None
    assert [n for n in ("waiting", "gone", "bare", "fine") if reg.needs_refresh(n, now)] == ["waiting"]
