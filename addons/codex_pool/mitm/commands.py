"""Steering from mitmweb and the mitmproxy console: the same actions as POST /admin/accounts/…
and /admin/reload, as mitmproxy commands (`codex_pool.pin alice`, `codex_pool.reload`, …)."""

from __future__ import annotations

import logging

from mitmproxy import command, exceptions

from codex_pool.core.pool import Pool
from codex_pool.mitm.lifecycle import Lifecycle

log = logging.getLogger("codex_pool")


class Commands:
    def __init__(self, pool: Pool, lifecycle: Lifecycle):
        self.pool = pool
        self.lifecycle = lifecycle

    def _steer(self, account: str, action: str) -> str:
        refused = self.pool.steer(account, action)
        if refused:
            raise exceptions.CommandError(refused)
        log.info("codex-pool: %s %s (mitmproxy command)", action, account)
        return f"{action} {account}: pinned={self.pool.router.pinned or '-'}"

    @command.command("codex_pool.pin")
    def pin(self, account: str) -> str:
        """Send every request to this account while it is usable (conversations keep their own pins)."""
        return self._steer(account, "pin")

    @command.command("codex_pool.unpin")
    def unpin(self, account: str) -> str:
        """Undo codex_pool.pin for this account."""
        return self._steer(account, "unpin")

    @command.command("codex_pool.disable")
    def disable(self, account: str) -> str:
        """Take this account out of service until codex_pool.enable."""
        return self._steer(account, "disable")

    @command.command("codex_pool.enable")
    def enable(self, account: str) -> str:
        """Put a disabled (or cooling, or limited) account back into service now."""
        return self._steer(account, "enable")

    @command.command("codex_pool.reload")
    def reload(self) -> None:
        """Re-read the pool folder now (in the background)."""
        try:
            self.lifecycle.spawn(self.lifecycle.rescan())
        except RuntimeError as e:  # no running event loop (not started yet)
            raise exceptions.CommandError(f"codex_pool.reload: the proxy is not running ({e})") from None
        log.info("codex-pool: reload requested (mitmproxy command)")

    @command.command("codex_pool.accounts")
    def accounts(self) -> str:
        """One line per pool account: name, state, in-flight requests."""
        snap = self.pool.live_snapshot(self.pool.now())
        rows = [f"{a['name']}: {a['state']}{' (pinned)' if a['name'] == self.pool.router.pinned else ''}, "
                f"{a['in_flight']} in flight" for a in snap["accounts"]]
        return "\n".join(rows) or "no accounts"


