"""The mitmproxy addon: translates flows to and from the pure core, and nothing more.

Every hook guards itself: a failure while routing answers the client locally with 503 (the
request never goes upstream with the client's own credentials); a failure anywhere else is
logged (redacted) and the flow goes on untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from . import conversation, failover, ledger, local_endpoints, paths, quota, state_store
from .accounts import AccountRegistry
from .config import Config, ConfigError, default_config, load_config
from .event_log import EventLog
from .health import HealthEvent, HealthPolicy
from .ledger_store import LedgerStore
from .metrics import PoolMetrics
from .local_answer import error_body
from .outcome import OK, Verdict, classify_http, classify_stream_failure, classify_transport_error, classify_ws_error
from .pool_folder import PoolFolder, PoolScan
from .refresher import PERMANENT, RefreshResult, Refresher
from .token_keeper import TokenKeeper
from .usage_poller import UsagePoller
from .redact import is_client_credential, redact
from .router import NoRoute, Route, Router
from .sse import SSETap
from .turn import TurnObserver

log = logging.getLogger("codex_pool")

META = "codex_pool"  # flow.metadata key; holds JSON-friendly values only (flows may be saved)
DEFAULT_CONFIG = "mitm.yaml"


class CodexPool:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.registry = AccountRegistry()
        self.router = Router(self.registry, "usage_balanced", 7200.0)
        self.folder: PoolFolder | None = None
        self.secret = b""
        self._config_mtime: int | None = None
        self._scan_lock: asyncio.Lock | None = None
        self._task: asyncio.Task | None = None
        self._pending_rescan: asyncio.Task | None = None
        self._ws_turns: dict[str, _WsTurn] = {}
        self.ledger: ledger.LedgerWriter | None = None
        self.metrics = PoolMetrics(self.live_snapshot)
        self.state_file: state_store.StateFile | None = None
        self.chains = failover.Chains()
        self.events: EventLog | None = None
        self._events_task: asyncio.Task | None = None
        self.http: httpx.AsyncClient | None = None
        self.keeper: TokenKeeper | None = None
        self.poller: UsagePoller | None = None
        self._background: set[asyncio.Task] = set()
        self._refreshed_after_401: dict[str, float] = {}
        self._models_cache: dict[str, tuple[float, bytes, dict]] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def load(self, loader) -> None:
        from mitmproxy import contentviews

        from .contentview import ViewCodexStream

        if contentviews.get(ViewCodexStream.name) is None:  # once per process (hot reloads included)
            contentviews.add(ViewCodexStream())
        loader.add_option(
            "pool_config",
            str,
            DEFAULT_CONFIG,
            "Path of the codex-pool settings file (mitm.yaml); relative paths inside it resolve against its folder.",
        )

    def configure(self, updated: set[str]) -> None:
        if "web_host" in updated and hasattr(ctx.options, "web_host") and not _loopback_host(ctx.options.web_host):
            # mitmweb 11.0.2 has no password: anyone who reaches it reads every flow
            raise exceptions.OptionsError(
                f"web_host: mitmweb would listen on {ctx.options.web_host!r}; mitmweb 11.0.2 has no password, so "
                "anyone who reaches it can read every flow. Keep it on 127.0.0.1 (use an SSH tunnel to reach it)."
            )
        if "stream_large_bodies" in updated and getattr(ctx.options, "stream_large_bodies", None):
            # A streamed request body makes mitmproxy send the headers upstream before our request
            # hook runs: the client's own credentials would go out and routing would be skipped.
            raise exceptions.OptionsError(
                "stream_large_bodies: codex-pool must see a whole request before anything is sent upstream "
                "(to pick the account and replace the client's credentials); unset it. SSE answers are "
                "streamed by codex-pool itself."
            )
        if "pool_config" not in updated:
            return
        try:
            config = self._read_config(Path(ctx.options.pool_config))
        except ConfigError as e:
            raise exceptions.OptionsError(f"pool_config: {e}") from None
        self._apply_config(config)
        if self._task is None:  # start-up: read the pool before the first request
            self._report(self.folder.scan() if self.folder else PoolScan(), initial=True)
            self._open_persistence(config)
        else:  # changed while running: rescan off the event loop, serialised with the watcher
            self._pending_rescan = asyncio.get_running_loop().create_task(self.rescan())

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
                log.error("codex-pool: saving state failed: %s", _describe(e))

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
        from . import usage_report

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

    def running(self) -> None:
        if getattr(ctx.options, "connection_strategy", "lazy") == "eager":
            log.warning(
                "codex-pool: connection_strategy=eager connects upstream before the addon sees a request, so "
                "/healthz and /admin/* fail while the upstream is unreachable; run with --set connection_strategy=lazy"
            )
        self._scan_lock = asyncio.Lock()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            trust_env=False,
            headers={"user-agent": "codex-pool"},
        )
        self._make_token_services()
        self._task = asyncio.create_task(self._watch())
        self._spawn(self._keep_tokens())
        self._spawn(self._poll_usage())
        self._spawn(self._persist())
        if self.ledger is not None:
            self._spawn(self.ledger.run(self.config.ledger_flush_seconds if self.config else 2.0))
        if self.events is not None:
            self._events_task = asyncio.create_task(self.events.run())

    def done(self) -> None:
        for task in (self._task, self._events_task, *self._background):
            if task is not None:
                task.cancel()
        self._task = self._events_task = None
        self._background.clear()
        if self.events is not None:
            self.events.flush()
        if self.ledger is not None:
            self.ledger.flush_sync()
        if self.state_file is not None:
            try:
                self.state_file.save(state_store.snapshot(self.router, self.registry, time.time()))
            except Exception as e:
                log.error("codex-pool: saving state at shutdown failed: %s", _describe(e))
        if self.http is not None:
            client, self.http = self.http, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:
                pass

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

    def _read_config(self, path: Path) -> Config:
        if not path.exists() and str(path) == DEFAULT_CONFIG:
            log.info("codex-pool: no %s here; using built-in defaults (pool_dir=pool, data_dir=data)", path)
            self._config_mtime = None
            return default_config(Path.cwd())
        config = load_config(path)
        self._config_mtime = _mtime(path)
        return config

    def _apply_config(self, config: Config) -> None:
        previous = self.config
        self.config = config
        self.router.reconfigure(config.policy, config.sticky_ttl_seconds, config.repin_after_seconds)
        self.registry.health.policy = HealthPolicy(
            config.cooldown_base_seconds, config.cooldown_max_seconds, config.usage_limit_default_minutes * 60
        )
        events_path = config.data_dir / "events.jsonl"
        if self.events is None or self.events.path != events_path:
            self.events = EventLog(events_path, int(config.event_log_max_mb * (1 << 20)))
        else:
            self.events.max_bytes = int(config.event_log_max_mb * (1 << 20))
        if previous is None or previous.pool_dir != config.pool_dir or self.folder is None:
            self.folder = PoolFolder(config.pool_dir)
            self.registry.pool_label = f"{config.pool_dir}/"
        if previous is None or previous.data_dir != config.data_dir:
            self.secret = _load_secret(config.data_dir)
        self._make_token_services()

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
                log.error("codex-pool: background check failed: %s", _describe(e))

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
                log.error("codex-pool: token check failed: %s", _describe(e))
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
                log.error("codex-pool: usage poll failed: %s", _describe(e))

    async def _reload_config_if_changed(self) -> None:
        config = self.config
        if config is None or config.source is None:
            return
        mtime = await asyncio.to_thread(_mtime, config.source)
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

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before anything can be sent: drop the client's credentials from every forwardable request,
        and keep its body buffered so routing (in `request`) happens before the upstream sees it."""
        try:
            if paths.is_local(flow.request.path):
                return
            flow.request.stream = False
            _drop_client_credentials(flow.request.headers)
        except Exception as e:
            log.error("codex-pool: requestheaders failed on %s: %s", flow.request.path, _describe(e))

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        try:
            if paths.is_local(flow.request.path):
                await local_endpoints.answer(self, flow)
                return
            if self._answer_from_models_cache(flow):
                return
            if not paths.is_forwardable(flow.request.path):
                answer_local(flow, 404, error_body(
                    "not_found", "not_forwarded",
                    f"codex-pool forwards only {paths.FORWARD_PREFIX}… to the ChatGPT backend; "
                    f"point your client's base URL at http://<proxy>{paths.FORWARD_PREFIX}codex"))
                return
            self._route(flow)
        except Exception as e:
            self._fail_closed(flow, e)

    def _answer_from_models_cache(self, flow: http.HTTPFlow) -> bool:
        """`GET /codex/models` is the same for every account: answer a recent copy locally."""
        if flow.request.method != "GET" or paths.bare(flow.request.path) != paths.MODELS:
            return False
        cached = self._models_cache.get(flow.request.path)
        if cached is None or time.time() - cached[0] > MODELS_CACHE_SECONDS:
            return False
        flow.response = http.Response.make(200, cached[1], cached[2])
        flow.comment = "models list from the proxy's cache"
        return True

    def _remember_models(self, flow: http.HTTPFlow) -> None:
        if (flow.request.method == "GET" and paths.bare(flow.request.path) == paths.MODELS
                and flow.response is not None and flow.response.status_code == 200 and flow.response.raw_content):
            headers = {k: v for k, v in flow.response.headers.items() if k.lower() in ("content-type", "content-encoding", "etag")}
            self._models_cache[flow.request.path] = (time.time(), flow.response.raw_content, headers)
            while len(self._models_cache) > 16:
                self._models_cache.pop(next(iter(self._models_cache)))

    def _route(self, flow: http.HTTPFlow) -> None:
        now = time.time()
        marker = flow.request.query.get(failover.MARKER)
        if marker is not None:
            del flow.request.query[failover.MARKER]  # ours; upstream never sees it
        chain = self.chains.resolve(marker, now)
        key = conversation.conversation_key(flow.request.headers, lambda: flow.request.get_content(strict=False))
        hashed = conversation.hash_key(self.secret, key) if key else None
        route = self.router.route(hashed, now, exclude=frozenset(chain.tried))
        if isinstance(route, NoRoute):
            self._answer_no_route(flow, route)
            log.warning("codex-pool: %s %s answered %d: %s", flow.request.method, flow.request.path, route.status, route.message)
            return
        self._set_credentials(flow, route, chain)

    def _set_credentials(self, flow: http.HTTPFlow, route: Route, chain: failover.Chain) -> None:
        headers = flow.request.headers
        _drop_client_credentials(headers)
        headers["Authorization"] = f"Bearer {route.account.access_token}"
        headers["ChatGPT-Account-ID"] = route.account.account_id
        self.registry.rt(route.account.name).in_flight += 1
        attempt = chain.attempt
        chain.tried.append(route.account.name)
        flow.metadata[META] = {
            "account": route.account.name,
            "reason": route.reason,
            "conversation": route.conversation,
            "pinned_to": route.pinned_to,
            "chain": chain.id,
            "attempt": attempt,
            "token": _fingerprint(route.account.access_token),
            "kind": ledger.request_kind(flow.request.method, flow.request.path, flow.request.headers),
            "in_flight": True,
        }
        conv = f" · conv {route.conversation[:8]}" if route.conversation else ""
        standin = f" standing in for {route.pinned_to}" if route.pinned_to else ""
        retry = f" · attempt {attempt}" if attempt > 1 else ""
        flow.comment = f"account {route.account.name} ({route.reason}{standin}){conv}{retry}"
        self._emit("request.account_selected", account=route.account.name, reason=route.reason,
                   conversation=route.conversation, attempt=attempt, pinned_to=route.pinned_to,
                   path=paths.bare(flow.request.path))

    def _answer_no_route(self, flow: http.HTTPFlow, route: NoRoute) -> None:
        answer_local(flow, route.status, error_body(route.type, route.code, route.message, **route.extra))
        if route.retry_after is not None:
            flow.response.headers["retry-after"] = str(route.retry_after)

    def _fail_closed(self, flow: http.HTTPFlow, e: BaseException) -> None:
        """Our own code failed: answer locally so nothing goes upstream with the client's credentials."""
        log.error("codex-pool: internal error on %s %s, answered 503 locally: %s",
                  flow.request.method, flow.request.path, _describe(e))
        meta = flow.metadata.get(META)
        if isinstance(meta, dict) and meta.get("in_flight"):
            self._finish(flow)
        answer_local(
            flow,
            503,
            error_body(
                "internal_error",
                "proxy_internal_error",
                f"codex-pool failed while handling this request ({type(e).__name__}); it was not forwarded. "
                "See the proxy log; if it persists, report it with that log.",
            ),
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not isinstance(meta, dict) or flow.response is None:
            return
        try:
            _redact_request(flow)
            now = time.time()
            limits = quota.from_headers(flow.response.headers, now)
            if limits is not None:
                self.registry.record_rate_limits(meta["account"], limits)
            if flow.response.headers.get("content-type", "").lower().startswith("text/event-stream"):
                keep = (self.config.inspect_body_limit_kb if self.config else 0) * 1024
                flow.response.stream = SSETap(
                    flow.response.headers.get("content-encoding"), TurnObserver(), clock=time.time, keep_bytes=keep
                )
        except Exception as e:
            log.error("codex-pool: responseheaders failed on %s: %s", flow.request.path, _describe(e))

    async def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not isinstance(meta, dict) or flow.response is None or "status" in meta:
            return
        try:
            meta["status"] = flow.response.status_code
            now = time.time()
            tap = flow.response.stream if isinstance(flow.response.stream, SSETap) else None
            if tap is not None:
                self._absorb_turn(flow, meta, tap.observer, tap.first_byte_at)
                verdict = self._stream_verdict(tap, now, meta["account"])
                if tap.kept:  # nothing is re-sent: the answer already streamed; this is for mitmweb
                    flow.response.raw_content = bytes(tap.kept)
                    if tap.bytes_seen > len(tap.kept):
                        flow.comment = f"{flow.comment} · body shown: first {len(tap.kept) // 1024} KB of {tap.bytes_seen // 1024} KB"
            else:
                if flow.response.timestamp_start and flow.request.timestamp_end:
                    meta["ttfb_ms"] = round((flow.response.timestamp_start - flow.request.timestamp_end) * 1000, 1)
                verdict = classify_http(flow.response.status_code, flow.response.headers,
                                        flow.response.get_content(strict=False) if flow.response.status_code >= 400 else None,
                                        now, self._latest_limits(meta["account"]))
            verdict = await self._recover_unauthorized(meta, verdict)
            if verdict.kind == "retry":
                self._allow_again(meta, meta["account"])
            self._judge(flow, meta, verdict, now, answer_sent=tap is not None)
            if flow.websocket is None:
                self._finish(flow)
                self._record_http(flow, meta, tap.observer if tap is not None else None)
                self._remember_models(flow)
        except Exception as e:
            log.error("codex-pool: response hook failed on %s: %s", flow.request.path, _describe(e))

    async def _recover_unauthorized(self, meta: dict, verdict: Verdict) -> Verdict:
        """A 401 first tries a refresh (shared with any other in flight). With fresh tokens the
        request is served again on the same account ("retry": the account is not to blame); a 401
        on tokens refreshed for that very reason within the last minute is a real auth problem."""
        if verdict.reason != "unauthorized" or self.keeper is None:
            return verdict
        name = meta["account"]
        account = self.registry.accounts.get(name)
        if account is None or not account.refresh_token:
            return verdict
        now = time.time()
        if _fingerprint(account.access_token) == meta.get("token"):
            last = self._refreshed_after_401.get(name)
            if last is not None and now - last < 60:
                return verdict
            try:
                result = await asyncio.wait_for(self.refresh_account(name, "unauthorized_recovery"), 20.0)
            except asyncio.TimeoutError:
                return Verdict("cooldown", "refresh_timeout", "the token refresh after a 401 took too long")
            if result is None:
                return verdict
            if not result.ok:
                if result.outcome == PERMANENT:
                    return Verdict("neutral", "unauthorized")  # _apply_refresh disabled it, saying why
                return Verdict("cooldown", "refresh_failed", result.detail)
            self._refreshed_after_401[name] = time.time()
        return Verdict("retry", "token_refreshed", "retrying with refreshed tokens")

    def _allow_again(self, meta: dict, name: str) -> None:
        """Let a failover chain use `name` once more (its tokens were just refreshed)."""
        chain = self.chains.resolve(meta.get("chain"), time.time())
        if name not in chain.refreshed:
            chain.refreshed.add(name)
            if name in chain.tried:
                chain.tried.remove(name)

    def _stream_verdict(self, tap: SSETap, now: float, account: str) -> Verdict:
        observer = tap.observer
        if observer is None or observer.completed:
            return OK
        if observer.failed is not None:
            return classify_stream_failure(observer.failed, now, self._latest_limits(account))
        if observer.error is not None:
            return classify_ws_error(observer.error, now, self._latest_limits(account))
        if observer.incomplete:
            return OK  # e.g. max_output_tokens: the account did its job
        return Verdict("cooldown", "stream_incomplete", "the answer ended before response.completed")

    def _judge(self, flow: http.HTTPFlow, meta: dict, verdict: Verdict, now: float, answer_sent: bool) -> None:
        """Fold an outcome into the account's health, then let the answer through, send the client
        to another account, or replace it with the pool's honest answer."""
        account = meta["account"]
        meta["outcome"] = verdict.kind if verdict.kind != "neutral" else "ok"
        if verdict.kind != "ok":
            meta["outcome_reason"] = verdict.reason
        self._health_events(self.registry.health.apply(account, verdict, now))
        chain = self.chains.resolve(meta.get("chain"), now)
        action = failover.decide(
            verdict,
            attempt=max(1, len(chain.tried)),  # distinct accounts tried: a retry after a refresh is free
            max_attempts=self.config.max_attempts if self.config else 3,
            has_alternative=self.router.has_alternative(now, frozenset(chain.tried)),
            answer_sent=answer_sent,
        )
        if action == failover.PASS:
            return
        upstream_status = flow.response.status_code
        meta["failover"] = verdict.reason
        if action == failover.RETRY:
            if _is_upgrade(flow):
                answer_local(flow, 503, error_body("server_error", "account_switch",
                             f"pool account {account} failed ({verdict.reason}); reconnect to be served by another"))
                flow.response.headers["retry-after"] = "0"
            else:
                flow.response = http.Response.make(307, b"", {
                    "location": failover.retry_location(flow.request.path, chain),
                    "cache-control": "no-store",
                    "x-codex-pool-failover": verdict.reason,
                })
            self.metrics.failover(verdict.reason)
            self._emit("request.failover", account=account, reason=verdict.reason, status=upstream_status,
                       attempt=meta.get("attempt", 1), conversation=meta.get("conversation"),
                       path=paths.bare(flow.request.path))
            flow.comment = f"{flow.comment} · failed over ({verdict.reason} {upstream_status})"
        else:
            no_route = self.router.unavailable(now, frozenset(chain.tried))
            self._answer_no_route(flow, no_route)
            flow.comment = f"{flow.comment} · {verdict.reason} {upstream_status} → {no_route.status} {no_route.code}"
        flow.marked = ":warning:"

    def _latest_limits(self, account: str):
        rt = self.registry.runtime.get(account)
        return rt.rate_limits if rt else None

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not isinstance(meta, dict):
            return
        try:
            _redact_request(flow)
            meta["error"] = flow.error.msg if flow.error else "unknown"
            tap = flow.response.stream if flow.response is not None and isinstance(flow.response.stream, SSETap) else None
            if tap is not None:
                self._absorb_turn(flow, meta, tap.observer, tap.first_byte_at)
            if "status" not in meta:  # not judged yet: the exchange broke
                verdict = classify_transport_error(meta["error"])
                flow.comment = f"{flow.comment} · {meta['error']}"
                if verdict.kind == "neutral":
                    meta["outcome"] = "client_cancelled"
                else:
                    flow.marked = ":x:"
                    meta["outcome"], meta["outcome_reason"] = verdict.kind, verdict.reason
                    self._health_events(self.registry.health.apply(meta["account"], verdict, time.time()))
            self._finish(flow)
            if flow.websocket is None:
                self._record_http(flow, meta, tap.observer if tap is not None else None)
        except Exception as e:
            log.error("codex-pool: error hook failed on %s: %s", flow.request.path, _describe(e))

    def _record_http(self, flow: http.HTTPFlow, meta: dict, observer: TurnObserver | None) -> None:
        """One ledger record for an HTTP exchange that reached upstream (once per flow)."""
        if meta.get("recorded"):
            return
        meta["recorded"] = True
        end = (flow.response.timestamp_end if flow.response is not None and flow.response.timestamp_end else None) or time.time()
        start = flow.request.timestamp_start
        model = observer.model if observer is not None else None
        if model is None and meta.get("kind") != "models":
            model = ledger.model_from_body(flow.request.get_content(strict=False))
        self._account_for(ledger.build_record(
            ts=start, account=meta["account"], kind=meta.get("kind", "other"), path=flow.request.path,
            status=meta.get("status"), outcome=_outcome(meta), usage=(meta.get("turn") or {}).get("usage"),
            model=model, ttfb_ms=meta.get("ttfb_ms"), duration_ms=(end - start) * 1000 if start else None,
            attempt=meta.get("attempt", 1), conversation=meta.get("conversation"),
        ))

    def _account_for(self, record: dict) -> None:
        """One finished exchange: into the ledger and the metrics, from the same record."""
        if self.ledger is not None:
            self.ledger.record(record)
        self.metrics.observe_record(record)

    def _absorb_turn(self, flow: http.HTTPFlow, meta: dict, observer: TurnObserver | None, first_byte_at: float | None) -> None:
        """Fold what a tap saw of one turn into the flow's metadata and the account's quota."""
        if observer is None:
            return
        summary = observer.summary()
        meta["turn"] = summary
        if first_byte_at is not None and flow.request.timestamp_end:
            meta["ttfb_ms"] = round((first_byte_at - flow.request.timestamp_end) * 1000, 1)
        now = time.time()
        for event in observer.rate_limits[-1:]:
            limits = quota.from_event(event, now)
            if limits is not None:
                self.registry.record_rate_limits(meta["account"], limits)
        usage = summary.get("usage")
        if usage:
            flow.comment = f"{flow.comment} · {usage['total_tokens']} tokens"

    def _finish(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if isinstance(meta, dict) and meta.get("in_flight"):
            meta["in_flight"] = False
            rt = self.registry.runtime.get(meta["account"])
            if rt is not None and rt.in_flight > 0:
                rt.in_flight -= 1

    # ---- WebSocket -------------------------------------------------------------------------

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not isinstance(meta, dict) or flow.websocket is None:
            return
        try:
            message = flow.websocket.messages[-1]
            if len(flow.websocket.messages) > 2 * WS_KEEP_MESSAGES:  # a long socket must not grow without bound
                del flow.websocket.messages[:-WS_KEEP_MESSAGES]
            if message.from_client:
                if message.is_text and b'"response.create"' in message.content:
                    self._ws_turns[flow.id] = _WsTurn(TurnObserver(), time.time(), ledger.model_from_body(message.content))
                return
            turn = self._ws_turns.get(flow.id)
            if turn is None or not message.is_text:
                return
            observer = turn.observer
            if turn.first_at is None:
                turn.first_at = time.time()
            seen_limits = len(observer.rate_limits)
            observer.observe_json(message.content)
            if observer.error is not None:
                await self._judge_ws_error(flow, meta, message, observer.error)
            if observer.terminal:
                self._absorb_turn(flow, meta, observer, None)
                meta["ws_turns"] = meta.get("ws_turns", 0) + 1
                del self._ws_turns[flow.id]
                self._record_ws_turn(meta, turn, None)
            elif len(observer.rate_limits) != seen_limits:
                limits = quota.from_event(observer.rate_limits[-1], time.time())
                if limits is not None:
                    self.registry.record_rate_limits(meta["account"], limits)
        except Exception as e:
            log.error("codex-pool: websocket_message failed on %s: %s", flow.request.path, _describe(e))

    async def _judge_ws_error(self, flow: http.HTTPFlow, meta: dict, message, frame: dict) -> None:
        """An error frame from upstream: mark the account, then rewrite the frame the way `_judge`
        rewrites an HTTP answer. While another account can serve, the client gets a retryable 503
        frame (its new socket lands elsewhere); otherwise the pool's honest answer (429 with the
        earliest reset when every account is limited, 503 saying why) — never an account's 401."""
        now = time.time()
        account = meta["account"]
        verdict = classify_ws_error(frame, now, self._latest_limits(account))
        verdict = await self._recover_unauthorized(meta, verdict)
        self._health_events(self.registry.health.apply(account, verdict, now))
        if not verdict.failed:
            return
        meta["outcome"], meta["outcome_reason"] = verdict.kind, verdict.reason
        if verdict.kind == "retry" or self.router.has_alternative(now, frozenset({account})):
            status, err = 503, {"type": "server_error", "code": "account_switch",
                                "message": f"pool account {account} failed ({verdict.reason}); reconnect to continue on another account"}
            meta["failover"] = verdict.reason
            self.metrics.failover(verdict.reason)
            self._emit("request.failover", account=account, reason=verdict.reason, status=frame.get("status"),
                       conversation=meta.get("conversation"), transport="websocket")
            flow.comment = f"{flow.comment} · failed over ({verdict.reason})"
        else:
            no_route = self.router.unavailable(now, frozenset({account}))
            status, err = no_route.status, {"type": no_route.type, "code": no_route.code, "message": no_route.message,
                                            **no_route.extra}
            flow.comment = f"{flow.comment} · {verdict.reason} → {status} {no_route.code}"
        message.content = json.dumps({"type": "error", "status": status, "error": err}).encode()
        flow.marked = ":warning:"

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

    def _record_ws_turn(self, meta: dict, turn: _WsTurn, cut: str | None) -> None:
        """One ledger record per WebSocket turn (response.create → terminal event, or the socket's end)."""
        observer = turn.observer
        outcome = cut or ("failed_over" if meta.get("failover") and observer.error is not None else None)
        if outcome is None:
            outcome = meta.get("outcome_reason") if observer.error is not None or observer.failed is not None else "ok"
        now = time.time()
        usage = observer.usage.to_dict() if observer.usage else None
        self._account_for(ledger.build_record(
            ts=turn.started, account=meta["account"], kind="ws_turn", path="/backend-api/codex/responses",
            status=(observer.error or {}).get("status", 200) if observer.error else 200, outcome=outcome or "ok",
            usage=usage, model=observer.model or turn.model,
            ttfb_ms=round((turn.first_at - turn.started) * 1000, 1) if turn.first_at else None,
            duration_ms=(now - turn.started) * 1000, attempt=meta.get("attempt", 1),
            conversation=meta.get("conversation"),
        ))

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        turn = self._ws_turns.pop(flow.id, None)
        try:
            meta = flow.metadata.get(META)
            if turn is not None and isinstance(meta, dict):  # the socket ended in the middle of a turn
                by_client = flow.websocket is not None and flow.websocket.closed_by_client
                self._record_ws_turn(meta, turn, "client_cancelled" if by_client else "connection_error")
            self._finish(flow)
        except Exception as e:
            log.error("codex-pool: websocket_end failed: %s", _describe(e))


# ---- helpers -----------------------------------------------------------------------------------


def answer_local(flow: http.HTTPFlow, status: int, body: bytes, content_type: str = "application/json") -> None:
    flow.response = http.Response.make(status, body, {"content-type": content_type, "cache-control": "no-store"})


STATE_SAVE_SECONDS = 5.0
MODELS_CACHE_SECONDS = 120.0
WS_KEEP_MESSAGES = 200  # frames kept on a WebSocket flow (for mitmweb); older ones are dropped


@dataclass
class _WsTurn:
    """A WebSocket turn in progress."""

    observer: TurnObserver
    started: float
    model: str | None
    first_at: float | None = None


def _outcome(meta: dict) -> str:
    if meta.get("failover"):
        return "failed_over"
    if meta.get("outcome") == "client_cancelled":
        return "client_cancelled"
    return meta.get("outcome_reason") or "ok"


def _loopback_host(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fingerprint(token: str) -> str:
    """A short non-reversible tag telling which access token a request went out with."""
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _is_upgrade(flow: http.HTTPFlow) -> bool:
    return flow.request.headers.get("upgrade", "").lower() == "websocket"


def _drop_client_credentials(headers: http.Headers) -> None:
    for name in {n for n in headers.keys() if is_client_credential(n)}:
        del headers[name]


def _redact_request(flow: http.HTTPFlow) -> None:
    """The request has been sent: keep the pool's token out of the stored flow."""
    meta = flow.metadata.get(META)
    if "Authorization" in flow.request.headers and isinstance(meta, dict):
        flow.request.headers["Authorization"] = f"Bearer [redacted: pool account {meta.get('account')}]"


def _describe(e: BaseException) -> str:
    return redact("".join(traceback.format_exception(e)).rstrip())


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _load_secret(data_dir: Path) -> bytes:
    """The key for hashing conversation ids, kept in data_dir so hashes are stable across restarts."""
    path = data_dir / "conversation-hash.key"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    key = secrets.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    except OSError as e:
        log.warning("codex-pool: cannot write %s (%s); conversation hashes will change on restart", path, e)
    return key

