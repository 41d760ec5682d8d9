"""The mitmproxy addon: translates flows to and from the pure core, and nothing more.

Every hook guards itself: a failure while routing answers the client locally with 503 (the
request never goes upstream with the client's own credentials); a failure anywhere else is
logged (redacted) and the flow goes on untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
from mitmproxy import ctx, exceptions, http

from codex_pool.core import conversation
from codex_pool.core import failover
from codex_pool.core import ledger
from codex_pool.mitm import local_endpoints
from codex_pool.core import paths
from codex_pool.core import quota
from codex_pool.core import state as state_store
from codex_pool.core.accounts import AccountRegistry
from codex_pool.mitm.background import BackgroundWork
from codex_pool.core.config import Config, ConfigError, default_config, load_config
from codex_pool.storage.event_log import EventLog
from codex_pool.mitm.flowtools import (
    META,
    MODELS_CACHE_SECONDS,
    WsTurn,
    answer_local,
    describe,
    drop_client_credentials,
    fingerprint,
    is_loopback_host,
    is_upgrade,
    load_secret,
    mtime_ns,
    outcome_of,
    redact_request,
)
from codex_pool.core.health import HealthPolicy
from codex_pool.core.bodies import error_body
from codex_pool.core.metrics import PoolMetrics
from codex_pool.core.outcome import (
    OK,
    Verdict,
    classify_http,
    classify_stream_failure,
    classify_transport_error,
    classify_ws_error,
)
from codex_pool.storage.pool_folder import PoolFolder, PoolScan
from codex_pool.upstream.refresher import PERMANENT
from codex_pool.core.router import NoRoute, Route, Router
from codex_pool.core.sse import SSETap
from codex_pool.upstream.token_keeper import TokenKeeper
from codex_pool.core.turn import TurnObserver
from codex_pool.upstream.usage_poller import UsagePoller
from codex_pool.mitm.websocket_hooks import WebSocketHooks

log = logging.getLogger("codex_pool")

DEFAULT_CONFIG = "mitm.yaml"


class CodexPool(BackgroundWork, WebSocketHooks):
    """The addon: lifecycle and the HTTP request path here; background work and WebSocket hooks in
    the two mixins (addon_background.py, websocket_hooks.py)."""

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
        self._ws_turns: dict[str, WsTurn] = {}
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

        from codex_pool.mitm.contentview import ViewCodexStream

        if contentviews.get(ViewCodexStream.name) is None:  # once per process (hot reloads included)
            contentviews.add(ViewCodexStream())
        loader.add_option(
            "pool_config",
            str,
            DEFAULT_CONFIG,
            "Path of the codex-pool settings file (mitm.yaml); relative paths inside it resolve against its folder.",
        )

    def configure(self, updated: set[str]) -> None:
        if "web_host" in updated and hasattr(ctx.options, "web_host") and not is_loopback_host(ctx.options.web_host):
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
                log.error("codex-pool: saving state at shutdown failed: %s", describe(e))
        if self.http is not None:
            client, self.http = self.http, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:
                pass

    def _read_config(self, path: Path) -> Config:
        if not path.exists() and str(path) == DEFAULT_CONFIG:
            log.info("codex-pool: no %s here; using built-in defaults (pool_dir=pool, data_dir=data)", path)
            self._config_mtime = None
            return default_config(Path.cwd())
        config = load_config(path)
        self._config_mtime = mtime_ns(path)
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
            self.secret = load_secret(config.data_dir)
        self._make_token_services()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before anything can be sent: drop the client's credentials from every forwardable request,
        and keep its body buffered so routing (in `request`) happens before the upstream sees it."""
        try:
            if paths.is_local(flow.request.path):
                return
            flow.request.stream = False
            drop_client_credentials(flow.request.headers)
        except Exception as e:
            log.error("codex-pool: requestheaders failed on %s: %s", flow.request.path, describe(e))

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
        drop_client_credentials(headers)
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
            "token": fingerprint(route.account.access_token),
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
                  flow.request.method, flow.request.path, describe(e))
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
            redact_request(flow)
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
            log.error("codex-pool: responseheaders failed on %s: %s", flow.request.path, describe(e))

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
            log.error("codex-pool: response hook failed on %s: %s", flow.request.path, describe(e))

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
        if fingerprint(account.access_token) == meta.get("token"):
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
            if is_upgrade(flow):
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
            redact_request(flow)
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
            log.error("codex-pool: error hook failed on %s: %s", flow.request.path, describe(e))

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
            status=meta.get("status"), outcome=outcome_of(meta), usage=(meta.get("turn") or {}).get("usage"),
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
