"""The pool's settings and background services: the `pool_config` option, reading mitm.yaml into
the `Pool`, opening what lives in data_dir (ledger, state file, event log), and the loops that run
beside the traffic (pool folder watcher, mitm.yaml reloads, token refresh, usage polling, saving
state, flushing the ledger and the event log). Started in `running`, stopped in `done`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from codex_pool.core import state, usage_report
from codex_pool.core.config import Config, ConfigError, default_config
from codex_pool.core.pool import Pool
from codex_pool.core.pool_scan import PoolScan
from codex_pool.mitm.flows import describe_error
from codex_pool.storage.config_file import load_config
from codex_pool.storage.data_dir_lock import DataDirInUse, claim_data_dir
from codex_pool.storage.event_log import EventLog, Events
from codex_pool.storage.files import FileLock, mtime_ns, sweep_temp_files
from codex_pool.storage.ledger_store import LedgerStore
from codex_pool.storage.ledger_writer import LedgerWriter
from codex_pool.storage.pool_accounts import AccountFileError, remove_account
from codex_pool.storage.pool_folder import PoolFolder
from codex_pool.storage.pool_temp import recover_temp_files
from codex_pool.storage.secret_file import load_secret
from codex_pool.storage.state_file import StateFile
from codex_pool.upstream.tokens import TokenService, make_client

log = logging.getLogger("codex_pool")

DEFAULT_CONFIG = "mitm.yaml"
STATE_SAVE_SECONDS = 5.0
TOKEN_CHECK_SECONDS = 5.0
USAGE_POLL_TICK_SECONDS = 1.0
RETENTION_EVERY_SECONDS = 3600.0


def keep_data_dir(new: Config, current: Config) -> Config:
    """A running proxy keeps its data_dir: its ledger, state file, event log and conversation-hash key
    are open there (moving them would split the ledger and orphan every sticky conversation), and
    it holds that folder's lock. The rest of `new` applies."""
    if new.data_dir == current.data_dir:
        return new
    log.warning("codex-pool: data_dir changed in %s (%s → %s); this proxy keeps using %s until it is restarted "
                "(its ledger, state, event log and conversation key are open there). The other settings are applied.",
                new.source, current.data_dir, new.data_dir, current.data_dir)
    return dataclasses.replace(new, data_dir=current.data_dir)


class Lifecycle:
    def __init__(self, pool: Pool, tokens: TokenService):
        self.pool = pool
        self.tokens = tokens
        self.events = Events()
        pool.events = self.events
        self.folder: PoolFolder | None = None
        self.ledger: LedgerWriter | None = None
        self.state_file: StateFile | None = None
        self._saved_urgent: dict | None = None  # state.urgent() and the time of the last periodic save
        self._saved_at: float | None = None
        self._config_mtime: int | None = None
        self._scan_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task] = set()
        self._running = False
        self._data_lock: FileLock | None = None  # this process's claim on data_dir

    # ---- mitmproxy hooks -------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option(
            "pool_config",
            str,
            DEFAULT_CONFIG,
            "Path of the codex-pool settings file (mitm.yaml); relative paths inside it resolve against its folder.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pool_config" not in updated:
            return
        try:
            config = self._read_config(Path(ctx.options.pool_config))
        except ConfigError as e:
            raise exceptions.OptionsError(f"pool_config: {e}") from None
        previous = self.pool.config
        if previous is not None and self._data_lock is not None:
            config = keep_data_dir(config, previous)
        else:  # before anything is written there: one proxy per data_dir
            try:
                self._data_lock = claim_data_dir(config.data_dir)
            except (DataDirInUse, OSError) as e:
                raise exceptions.OptionsError(f"codex-pool: {e}") from None
        self._apply_config(config)
        if not self._running:  # start-up: read the pool before the first request (and any refresh)
            self._report(self._scan_folder(self.folder) if self.folder else PoolScan(), initial=True)
            self._open_persistence(config)
        else:  # changed while running: rescan off the event loop, serialised with the watcher
            self.spawn(self.rescan())

    def running(self) -> None:
        if getattr(ctx.options, "connection_strategy", "lazy") == "eager":
            log.warning(
                "codex-pool: connection_strategy=eager connects upstream before the addon sees a request, so "
                "/healthz and /admin/* fail while the upstream is unreachable; run with --set connection_strategy=lazy"
            )
        self._running = True
        self._scan_lock = asyncio.Lock()
        self._configure_tokens(make_client())
        config = self.pool.config
        self.spawn(self._watch())
        self.spawn(self._keep_tokens())
        self.spawn(self._poll_usage())
        self.spawn(self._persist())
        if self.ledger is not None:
            self.spawn(self.ledger.run(config.ledger_flush_seconds if config else 2.0))
        if self.events.log is not None:
            self.spawn(self.events.log.run())

    def done(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._running = False
        try:
            self._save_at_shutdown()
        finally:  # the data_dir is free once its files are flushed (a reload takes it again at once)
            lock, self._data_lock = self._data_lock, None
            if lock is not None:
                lock.release()

    def _save_at_shutdown(self) -> None:
        if self.events.log is not None:
            self.events.log.flush()
        if self.ledger is not None:
            self.ledger.flush_sync()
        if self.state_file is not None:
            try:
                self.state_file.save(state.snapshot(self.pool.router, self.pool.registry, self.pool.now()))
            except Exception as e:
                log.error("codex-pool: saving state at shutdown failed: %s", describe_error(e))
        client, self.tokens.http = self.tokens.http, None
        if client is not None:
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:
                pass

    # ---- settings --------------------------------------------------------------------------

    def _read_config(self, path: Path) -> Config:
        if not path.exists() and str(path) == DEFAULT_CONFIG:
            log.info("codex-pool: no %s here; using built-in defaults (pool_dir=pool, data_dir=data)", path)
            self._config_mtime = None
            return default_config(Path.cwd())
        config = load_config(path)
        self._config_mtime = mtime_ns(path)
        return config

    def _apply_config(self, config: Config) -> None:
        previous = self.pool.config
        self.pool.apply_config(config)
        events_path = config.data_dir / "events.jsonl"
        max_bytes = int(config.event_log_max_mb * (1 << 20))
        if self.events.log is None or self.events.log.path != events_path:
            self.events.log = EventLog(events_path, max_bytes)
        else:
            self.events.log.max_bytes = max_bytes
        if previous is None or previous.pool_dir != config.pool_dir or self.folder is None:
            self.folder = PoolFolder(config.pool_dir)
        if previous is None or previous.data_dir != config.data_dir:
            self.pool.secret = load_secret(config.data_dir)
        if self.tokens.http is not None:
            self._configure_tokens(self.tokens.http)

    def _configure_tokens(self, http) -> None:
        if self.pool.config is not None:
            self.tokens.configure(self.pool.config, http, upstream_base())

    def _open_persistence(self, config: Config) -> None:
        """Start-up: clear what killed writers left, open the usage ledger, bring back the saved
        serving state."""
        swept = sweep_temp_files(config.data_dir)  # this process holds data_dir's lock: no write is in progress
        if swept:
            log.info("codex-pool: removed %d temp file(s) a killed writer left in %s", len(swept), config.data_dir)
        if self.ledger is None:
            store = LedgerStore(config.data_dir / "ledger")
            for warning in store.open():
                log.warning("codex-pool: %s", warning)
            self.ledger = LedgerWriter(store)
            self.pool.ledger = self.ledger
        if self.state_file is None:
            self.state_file = StateFile(config.data_dir / "state.json")
            doc, warning = self.state_file.load()
            if warning:
                log.warning("codex-pool: %s", warning)
            if doc:
                counts = state.restore(doc, self.pool.router, self.pool.registry, self.pool.now())
                if any(counts.values()):
                    log.info("codex-pool: restored %d sticky conversation(s), %d account state(s), %d quota figure(s)%s",
                             counts["sticky"], counts["health"], counts["quota"],
                             f", pin on {self.pool.router.pinned}" if counts["pinned"] else "")

    # ---- background loops ------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self) -> None:
        """Pool folder changes, mitm.yaml edits, sticky-map pruning, health timers."""
        while True:
            config = self.pool.config
            await asyncio.sleep(config.pool_scan_seconds if config else 2.0)
            try:
                await self.rescan(check_config=True)
                now = self.pool.now()
                self.pool.router.sticky.prune(now)
                self.pool.note(self.pool.registry.health.tick(now))
            except Exception as e:  # never let the watcher die
                log.error("codex-pool: background check failed: %s", describe_error(e))

    async def _keep_tokens(self) -> None:
        """Refresh accounts whose access token is about to expire."""
        while True:
            try:
                for name, reason in self.tokens.due(self.pool.now()):
                    self.tokens.refresh_shared(name, reason)
            except Exception as e:
                log.error("codex-pool: token check failed: %s", describe_error(e))
            await asyncio.sleep(TOKEN_CHECK_SECONDS)

    async def _poll_usage(self) -> None:
        """Quota figures per account from /backend-api/wham/usage, spread over time."""
        while True:
            await asyncio.sleep(USAGE_POLL_TICK_SECONDS)
            try:
                await self.tokens.poll_due()
            except Exception as e:
                log.error("codex-pool: usage poll failed: %s", describe_error(e))

    async def _persist(self) -> None:
        """Save the serving state every few seconds; drop expired ledger days hourly."""
        last_retention = 0.0
        while True:
            await asyncio.sleep(STATE_SAVE_SECONDS)
            try:
                await self.save_state_if_due()
                now, config = self.pool.now(), self.pool.config
                if self.ledger is not None and config is not None and now - last_retention > RETENTION_EVERY_SECONDS:
                    last_retention = now
                    dropped = await asyncio.to_thread(self.ledger.store.drop_older_than, config.ledger_retention_days, now)
                    if dropped:
                        log.info("codex-pool: ledger retention dropped %d old file(s)", len(dropped))
            except Exception as e:
                log.error("codex-pool: saving state failed: %s", describe_error(e))

    async def save_state_if_due(self) -> None:
        """The periodic save of the serving state (in a worker thread), when `state.save_due` says so;
        `done` saves unconditionally."""
        if self.state_file is None:
            return
        pool, now = self.pool, self.pool.now()
        urgent = state.urgent(pool.router, pool.registry)
        if not state.save_due(self._saved_urgent, urgent, self._saved_at, now):
            return
        doc = state.snapshot(pool.router, pool.registry, now)
        await asyncio.to_thread(self.state_file.save, doc)
        self._saved_urgent, self._saved_at = urgent, now

    async def _reload_config(self, mtime: int | None) -> None:
        """mitm.yaml changed on disk (its mtime differs): apply it, or keep the old settings."""
        config = self.pool.config
        if config is None or config.source is None or mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            new = await asyncio.to_thread(load_config, config.source)
        except ConfigError as e:
            log.warning("codex-pool: %s — keeping the previous settings until the file is fixed", e)
            return
        new = keep_data_dir(new, config)
        if new != config:
            folder = self.folder
            self._apply_config(new)
            log.info("codex-pool: reloaded %s", config.source)
            if self.folder is not folder:  # pool_dir changed: serve the new folder now
                await self.rescan()

    async def remove_account(self, name: str) -> Path:
        """Take an account out of service now: its file moves to the pool folder's `.removed/` and the
        folder is read again at once (its conversations move on, its refreshes stop). AccountFileError
        when there is no such file."""
        config = self.pool.config
        if config is None:
            raise AccountFileError("codex-pool has no settings yet")
        moved = await asyncio.to_thread(remove_account, config.pool_dir, name)
        await self.rescan()
        log.info("codex-pool: account %s removed from the pool (its file is now %s)", name, moved)
        return moved

    async def rescan(self, check_config: bool = False) -> PoolScan:
        """Re-read the pool folder (changed files only) in a worker thread; with `check_config`,
        also look at mitm.yaml's mtime in the same hop (one thread hop per watcher tick)."""
        if self._scan_lock is None:
            self._scan_lock = asyncio.Lock()
        source = self.pool.config.source if check_config and self.pool.config else None
        async with self._scan_lock:
            folder = self.folder
            if folder is None:
                return PoolScan()

            def look() -> tuple[PoolScan, int | None]:
                return self._scan_folder(folder), mtime_ns(source) if source is not None else None

            scan, mtime = await asyncio.to_thread(look)
            if folder is self.folder:
                self._report(scan, initial=False)
        if source is not None:
            await self._reload_config(mtime)
        return scan

    @staticmethod
    def _scan_folder(folder: PoolFolder) -> PoolScan:
        """The pool folder's files, after settling what killed refreshes left (blocking: start-up, or
        the watcher's worker thread)."""
        for name, outcome in recover_temp_files(folder.path):
            if outcome == "adopted":
                log.warning("codex-pool: adopted the newer tokens a killed refresh left in %s", name)
        return folder.scan()

    def _report(self, scan: PoolScan, initial: bool) -> None:
        registry = self.pool.registry
        now = self.pool.now()
        self.pool.note(registry.apply_scan(scan, now))
        self.pool.metrics.seed_refreshes(registry.accounts)  # before any refresh of a new account
        for name in scan.removed:
            self.tokens.forget(name)
        if scan.folder_error and scan.changed:
            log.warning("codex-pool: %s", scan.folder_error)
        for problem in scan.new_problems:
            log.warning("codex-pool: skipping pool file %s: %s", problem.path, problem.reason)
        for shadowed, served in scan.new_duplicates:
            log.warning(
                "codex-pool: %s.json and %s.json hold the same account; serving %s.json, listing %s.json as a duplicate",
                shadowed, served, served, shadowed,
            )
        if initial or scan.added or scan.removed or scan.updated:
            for name in scan.added if not initial else []:
                log.info("codex-pool: pool file %s.json added", name)
            for name in scan.updated:
                log.info("codex-pool: pool file %s.json changed", name)
            for name in scan.removed:
                log.info("codex-pool: pool file %s.json removed", name)
            log.info(
                "codex-pool: %s %d account(s) (%d usable) from %s%s",
                "loaded" if initial else "now",
                len(registry.accounts),
                len(registry.usable_names(now)),
                self.folder.path if self.folder else "?",
                f"; {len(registry.problems)} file(s) skipped" if registry.problems else "",
            )

    async def usage_report(self, since: str | None, until: str | None, group: str) -> dict:
        """The ledger aggregated like scripts/usage-report --json (queued records included)."""
        start = usage_report.parse_when(since, end_of_day=False) if since else None
        end = usage_report.parse_when(until, end_of_day=True) if until else None
        groups = usage_report.check_group([k.strip() for k in (group or "").split(",") if k.strip()] or ["account"])
        ledger = self.ledger
        if ledger is None:
            return usage_report.to_json([], groups, start, end)
        pending = ledger.queued()
        prices = self.pool.config.prices if self.pool.config else None

        def collect() -> list[dict]:
            records = list(ledger.store.query(start, end))
            records += [r for r in pending if (start is None or r["ts"] >= start) and (end is None or r["ts"] < end)]
            return usage_report.aggregate(records, groups, prices)

        rows = await asyncio.to_thread(collect)
        return usage_report.to_json(rows, groups, start, end)


def upstream_base() -> str | None:
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
