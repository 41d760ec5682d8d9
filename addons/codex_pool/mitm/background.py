"""The addon's background work: pool watching, token refresh, usage polling, saving state, and
the events, reports and snapshots built from the live state. A mixin of `CodexPool`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mitmproxy import ctx
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from codex_pool.core import ledger
from codex_pool.core import state as state_store
from codex_pool.core.config import Config, ConfigError, load_config
from codex_pool.mitm.flowtools import describe, mtime_ns
from codex_pool.core.health import HealthEvent
from codex_pool.storage.ledger_store import LedgerStore
from codex_pool.storage.pool_folder import PoolScan
from codex_pool.upstream.refresher import PERMANENT, Refresher, RefreshResult
from codex_pool.upstream.token_keeper import TokenKeeper
from codex_pool.upstream.usage_poller import UsagePoller

log = logging.getLogger("codex_pool")

STATE_SAVE_SECONDS = 5.0


class BackgroundWork:
    def _open_persistence(self, config: Config) -> None:
        """Start-up: open the usage ledger and bring back the saved serving state."""
        if self.ledger is None:
            store = LedgerStore(config.data_dir / "ledger")
            for warning in store.open():
                log.warning("codex-pool: %s", warning)
            self.ledger = ledger.LedgerWriter(store)
        if self.state_file is None:
            self.state_file = state_store.StateFile(config.data_dir / "state.json")
            doc, warning = self.state_file.load()
            if warning:
                log.warning("codex-pool: %s", warning)
            if doc:
                counts = state_store.restore(doc, self.router, self.registry, time.time())
                if any(counts.values()):
                    log.info("codex-pool: restored %d sticky conversation(s), %d account state(s), %d quota figure(s)%s",
                             counts["sticky"], counts["health"], counts["quota"],
                             f", pin on {self.router.pinned}" if counts["pinned"] else "")

    async def _persist(self) -> None:
        """Background: save the serving state every few seconds, drop expired ledger days hourly."""
        last_retention = 0.0
        while True:
            await asyncio.sleep(STATE_SAVE_SECONDS)
            try:
                await self.save_state()
                now = time.time()
                if self.ledger is not None and self.config is not None and now - last_retention > 3600:
                    last_retention = now
                    dropped = await asyncio.to_thread(self.ledger.store.drop_older_than,
                                                      self.config.ledger_retention_days, now)
                    if dropped:
                        log.info("codex-pool: ledger retention dropped %d old file(s)", len(dropped))
            except Exception as e:
                log.error("codex-pool: saving state failed: %s", describe(e))

    def live_snapshot(self, now: float) -> dict:
        """What the scrape-time gauges read: each served account's state and quota, sticky count."""
        rows = []
        for name, account in sorted(self.registry.accounts.items()):
            h = self.registry.health.peek(name)
            usable = self.registry.unusable_reason(name, now) is None
            state = "expired" if account.expired(now) else (h.state if not self.registry.health.usable(name, now) else "usable")
            rt = self.registry.runtime.get(name)
            latest = rt.quota.latest if rt else None
            rows.append({
                "name": name, "usable": usable, "state": state, "in_flight": rt.in_flight if rt else 0,
                "primary": latest.primary.to_dict() if latest and latest.primary else None,
                "secondary": latest.secondary.to_dict() if latest and latest.secondary else None,
            })
        return {"accounts": rows, "sticky": len(self.router.sticky)}

    async def usage_report(self, since: str | None, until: str | None, group: str) -> dict:
        """The ledger aggregated like scripts/usage-report --json (queued records included)."""
        from codex_pool.core import usage_report

        start = usage_report.parse_when(since, end_of_day=False) if since else None
        end = usage_report.parse_when(until, end_of_day=True) if until else None
        groups = usage_report.check_group([k.strip() for k in (group or "").split(",") if k.strip()] or ["account"])
        if self.ledger is None:
            return usage_report.to_json([], groups, start, end)
        pending = list(self.ledger._queue)

        def collect() -> list[dict]:
            records = list(self.ledger.store.query(start, end))
            records += [r for r in pending if (start is None or r["ts"] >= start) and (end is None or r["ts"] < end)]
            return usage_report.aggregate(records, groups, self.config.prices if self.config else None)

        rows = await asyncio.to_thread(collect)
        return usage_report.to_json(rows, groups, start, end)

    async def save_state(self) -> None:
        if self.state_file is not None:
            doc = state_store.snapshot(self.router, self.registry, time.time())
            await asyncio.to_thread(self.state_file.save, doc)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _make_token_services(self) -> None:
        """(Re)build the refresher and usage poller for the current settings."""
        if self.http is None or self.config is None:
            return
        config = self.config
        refresher = Refresher(self.http, config.token_url, config.client_id)
        if self.keeper is None:
            self.keeper = TokenKeeper(refresher, config.refresh_margin_minutes * 60)
        else:
            self.keeper.refresher.token_url, self.keeper.refresher.client_id = config.token_url, config.client_id
            self.keeper.margin = config.refresh_margin_minutes * 60
        base = self._upstream_base()
        if config.usage_poll_seconds > 0 and base:
            if self.poller is None or self.poller.base_url != base.rstrip("/"):
                self.poller = UsagePoller(self.http, base, config.usage_poll_seconds)
            self.poller.interval = config.usage_poll_seconds
        else:
            self.poller = None

    @staticmethod
    def _upstream_base() -> str | None:
        """The reverse-proxy target (e.g. https://chatgpt.com), for our own calls to it."""
        for spec in getattr(ctx.options, "mode", []) or []:
            try:
                mode = ProxyMode.parse(spec)
            except ValueError:
                continue
            if isinstance(mode, ReverseMode):
                host, port = mode.address
                default = 443 if mode.scheme in ("https", "http3", "tls", "dtls") else 80
                scheme = "https" if mode.scheme in ("https", "http3") else "http"
                return f"{scheme}://{host}" + ("" if port == default else f":{port}")
        return None

    async def _watch(self) -> None:
        """Background loop: pool folder changes, mitm.yaml edits, sticky-map pruning."""
        while True:
            config = self.config
            await asyncio.sleep(config.pool_scan_seconds if config else 2.0)
            try:
                await self._reload_config_if_changed()
                await self.rescan()
                now = time.time()
                self.router.sticky.prune(now)
                self._health_events(self.registry.health.tick(now))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let the watcher die
                log.error("codex-pool: background check failed: %s", describe(e))

    async def _keep_tokens(self) -> None:
        """Background: refresh accounts whose access token is about to expire."""
        while True:
            try:
                now = time.time()
                if self.keeper is not None:
                    skip = {n for n in self.registry.accounts if self.registry.health.peek(n).state == "disabled"}
                    for account, reason in self.keeper.due(self.registry.accounts, now, skip):
                        self._spawn(self.refresh_account(account.name, reason))
            except Exception as e:
                log.error("codex-pool: token check failed: %s", describe(e))
            await asyncio.sleep(5.0)

    async def refresh_account(self, name: str, reason: str) -> RefreshResult | None:
        """Refresh one account now (shared with any refresh already running for it) and apply it."""
        account = self.registry.accounts.get(name)
        if account is None or self.keeper is None:
            return None
        result = await self.keeper.refresh(account, reason, time.time())
        self._apply_refresh(account, result, reason)
        return result

    def _apply_refresh(self, before, result: RefreshResult, reason: str) -> None:
        name = before.name
        now = time.time()
        self.metrics.refresh(name, result.outcome)
        if result.ok and result.account is not None:
            if before.refresh_token and result.account.refresh_token != before.refresh_token:
                self.registry.superseded.add(before.refresh_token)
            if name in self.registry.accounts:
                self.registry.accounts[name] = result.account
            self._health_events(self.registry.health.file_replaced(name, now))
            if self.poller is not None:
                self.poller.resume(name)
            self._emit("account.refreshed", account=name, how=result.outcome, reason=reason,
                       expires_at=result.account.access_expires_at)
            log.info("codex-pool: %s tokens %s (%s)", name, result.outcome, reason)
        elif result.outcome == PERMANENT:
            detail = f"token refresh failed ({result.code}); replace {before.path.name} with a fresh `codex login`"
            self._health_events(self.registry.health.disable(name, "reauth_required", now, detail))
            self._emit("account.refresh_failed", account=name, code=result.code, permanent=True)
        else:
            log.warning("codex-pool: refreshing %s failed (%s: %s); will retry", name, result.code, result.detail)
            self._emit("account.refresh_failed", account=name, code=result.code, permanent=False)

    async def _poll_usage(self) -> None:
        """Background: quota figures per account from /backend-api/wham/usage, spread over time."""
        while True:
            await asyncio.sleep(1.0)
            try:
                poller = self.poller
                if poller is None:
                    continue
                now = time.time()
                usable = [n for n in self.registry.accounts
                          if self.registry.health.peek(n).state != "disabled" and not self.registry.accounts[n].expired(now)]
                poller.schedule(usable, now)
                for name in poller.due(now)[:4]:
                    account = self.registry.accounts.get(name)
                    if account is None:
                        continue
                    result = await poller.poll(account, now)
                    if result.kind == "ok" and result.limits is not None:
                        self.registry.record_rate_limits(name, result.limits)
                    elif result.kind == "unauthorized":
                        self._spawn(self.refresh_account(name, "unauthorized_recovery"))
                    elif result.kind == "forbidden":
                        log.info("codex-pool: usage polling paused for %s (403); the account stays in service", name)
            except Exception as e:
                log.error("codex-pool: usage poll failed: %s", describe(e))

    async def _reload_config_if_changed(self) -> None:
        config = self.config
        if config is None or config.source is None:
            return
        mtime = await asyncio.to_thread(mtime_ns, config.source)
        if mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            new = await asyncio.to_thread(load_config, config.source)
        except ConfigError as e:
            log.warning("codex-pool: %s — keeping the previous settings until the file is fixed", e)
            return
        if new != config:
            self._apply_config(new)
            log.info("codex-pool: reloaded %s", config.source)

    async def rescan(self) -> PoolScan:
        """Re-read the pool folder (changed files only) in a worker thread."""
        if self._scan_lock is None:
            self._scan_lock = asyncio.Lock()
        async with self._scan_lock:
            folder = self.folder
            if folder is None:
                return PoolScan()
            scan = await asyncio.to_thread(folder.scan)
            if folder is self.folder:
                self._report(scan, initial=False)
            return scan

    def _report(self, scan: PoolScan, initial: bool) -> None:
        self._health_events(self.registry.apply_scan(scan))
        if scan.folder_error and scan.changed:
            log.warning("codex-pool: %s", scan.folder_error)
        for problem in scan.new_problems:
            log.warning("codex-pool: skipping pool file %s: %s", problem.path, problem.reason)
        for shadowed, served in scan.new_duplicates:
            log.warning(
                "codex-pool: %s.json and %s.json hold the same account; serving %s.json, listing %s.json as a duplicate",
                shadowed, served, served, shadowed,
            )
        verb = "loaded" if initial else "now"
        if initial or scan.added or scan.removed or scan.updated:
            for name in scan.added if not initial else []:
                log.info("codex-pool: pool file %s.json added", name)
            for name in scan.updated:
                log.info("codex-pool: pool file %s.json changed", name)
            for name in scan.removed:
                log.info("codex-pool: pool file %s.json removed", name)
            now = time.time()
            log.info(
                "codex-pool: %s %d account(s) (%d usable) from %s%s",
                verb,
                len(self.registry.accounts),
                len(self.registry.usable_names(now)),
                self.folder.path if self.folder else "?",
                f"; {len(self.registry.problems)} file(s) skipped" if self.registry.problems else "",
            )

    # ---- request path ----------------------------------------------------------------------

    def account_action(self, name: str, action: str) -> None:
        """Admin steering: pin (every request goes there while usable), unpin, disable, enable."""
        now = time.time()
        if action == "pin":
            self.router.pinned = name
        elif action == "unpin":
            if self.router.pinned == name:
                self.router.pinned = None
        elif action == "disable":
            self._health_events(self.registry.health.disable(name, "manual", now, "disabled by an admin"))
        elif action == "enable":
            self._health_events(self.registry.health.enable(name, now))
        log.info("codex-pool: admin %s %s", action, name)
        self._emit("admin." + action, account=name)

    def _health_events(self, events: list[HealthEvent]) -> None:
        for e in events:
            self._emit(e.event, account=e.account, **e.fields)
            level = logging.INFO if e.event == "account.recovered" else logging.WARNING
            log.log(level, "codex-pool: %s %s %s", e.event, e.account,
                    " ".join(f"{k}={v}" for k, v in e.fields.items() if v is not None and k != "detail"))

    def _emit(self, event: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)

