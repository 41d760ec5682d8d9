"""Client keys on the listener (off while `client_keys` is unset in mitm.yaml): who is asking, and
may they go on. The decisions are core/client_keys.py and core/key_book.py; this part translates
flows to and from them.

- `requestheaders` (listed before the credential guard, which drops the client's credentials):
  the key presented as `Authorization: Bearer <key>` (Codex: the access token of the placeholder
  auth.json `scripts/codex-setup --key` writes), or in `api-key` / `x-api-key`, is identified; only
  its name rides on the flow (`flow.metadata[KEY]`), never the key.
- `request` (first of all): a request that needs a key and has no usable one is answered 401 in
  the OpenAI error format (403 on Codex's `/backend-api/` paths: see `_unauthorized`); a key over one of its limits 429 with the window's reset
  (`usage_limit_reached`, `resets_at`, `Retry-After`, the shape Codex prints as a usage limit); a
  model the key may not use 403. `GET /v1/usage` answers a key holder with their own usage and
  limits. Nothing refused is forwarded.
- the keys file is re-read within `KEYS_CHECK_SECONDS` of a change; a bad edit keeps the keys in
  force and is logged. Usage is rebuilt from the ledger at start-up, so limits survive restarts.

Needs no key: /healthz, /metrics and /admin/* (those have the admin token), a client's own token
refresh (/oauth/token: placeholder tokens only) and Codex's workspace routing (accounts/check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode

from codex_pool.core import body_decode, ledger, paths
from codex_pool.core.addresses import is_loopback
from codex_pool.core.bodies import json_body
from codex_pool.core.client_keys import LONGEST_WINDOW, KeysError, bearer, usage_from_records
from codex_pool.core.pool import Pool
from codex_pool.mitm.flows import KEY, answer, answer_error, describe_error
from codex_pool.storage.files import mtime_ns
from codex_pool.storage.keys_file import load_keys
from codex_pool.storage.ledger_store import LedgerStore

log = logging.getLogger("codex_pool")

KEYS_CHECK_SECONDS = 1.0
REFUSED = "codex_pool.key_refused"  # flow.metadata: why the request has no usable key
USAGE_PATH = "/v1/usage"
KEYLESS = frozenset({paths.HEALTH, paths.METRICS, paths.TOKEN, paths.ACCOUNTS_CHECK})
KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key")


def exposure_problem(hosts: list[str], client_keys, admin_token: str | None) -> str | None:
    """Beyond loopback, anyone who reaches the port could spend the pool and read its admin views:
    that needs client keys and an admin token. None when safe, else what to set."""
    exposed = [h or "all interfaces" for h in hosts if not is_loopback(h)]
    if not exposed:
        return None
    missing = [what for what, ok in (("client_keys: keys.json (then scripts/keys create NAME)", client_keys),
                                     ("admin_token: <at least 16 random characters>", admin_token)) if not ok]
    if not missing:
        return None
    return (f"codex-pool would listen on {', '.join(sorted(set(exposed)))}, where anyone who reaches the port could use "
            f"every pool account; add to mitm.yaml: {'; '.join(missing)} — or listen on 127.0.0.1 only "
            "(--mode reverse:https://chatgpt.com@127.0.0.1:8989). See README, 'Sharing the pool'.")


def needs_key(path: str) -> bool:
    p = paths.bare(path)
    return not (p in KEYLESS or p == "/admin" or p.startswith(paths.ADMIN_PREFIX))


class ClientAuth:
    def __init__(self, pool: Pool):
        self.pool = pool
        self._path: Path | None = None
        self._mtime: int | None = None
        self._task: asyncio.Task | None = None
        self._started_at = time.time()

    # ---- the keys file ---------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if "pool_config" in updated:
            self._load(initial=self._path is None)
        if updated & {"pool_config", "mode", "listen_host", "web_host"}:
            refused = exposure_problem(self._listen_hosts(), self.pool.config.client_keys if self.pool.config else None,
                                       self.pool.config.admin_token if self.pool.config else None)
            if refused:
                raise exceptions.OptionsError(refused)

    @staticmethod
    def _listen_hosts() -> list[str]:
        """Every address this mitmproxy would listen on: its proxy modes, and mitmweb's UI."""
        hosts = []
        default = getattr(ctx.options, "listen_host", "") or ""
        for spec in getattr(ctx.options, "mode", []) or []:
            try:
                hosts.append(ProxyMode.parse(spec).listen_host(default))
            except ValueError:
                continue
        if hasattr(ctx.options, "web_host"):
            hosts.append(ctx.options.web_host)
        return hosts

    def running(self) -> None:
        self._started_at = self.pool.now()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch())
        if self.pool.keys.on:
            loop.create_task(self._rebuild_usage())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _load(self, initial: bool = False) -> None:
        config = self.pool.config
        path = config.client_keys if config is not None else None
        if path is None:
            if self.pool.keys.on:
                log.warning("codex-pool: client_keys unset in mitm.yaml: client keys are off")
            self.pool.keys.load(None)
            self._path = self._mtime = None
            return
        self._path = path
        self._mtime = mtime_ns(path)
        try:
            keyfile = load_keys(path)
        except (KeysError, OSError) as e:
            if self.pool.keys.on:
                log.warning("codex-pool: %s; the keys in force stay until the file is fixed", e)
                return
            # keys are on but none can be read: every request is refused until the file is fixed
            # (a warning: mitmdump exits on an error logged at start-up, and this is a state to run in)
            log.warning("codex-pool: %s; every request needing a key is refused until it is fixed "
                      "(scripts/keys create NAME makes the file)", e)
            self.pool.keys.load(None)
            self.pool.keys.file_error = str(e)
            return
        self.pool.keys.file_error = None
        self.pool.keys.load(keyfile)
        log.info("codex-pool: %d client key(s) from %s", len(keyfile.keys), path)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(KEYS_CHECK_SECONDS)
            try:
                if self._path is not None and mtime_ns(self._path) != self._mtime:
                    self._load()
            except Exception as e:
                log.error("codex-pool: watching the keys file failed: %s", describe_error(e))

    async def _rebuild_usage(self) -> None:
        """Each key's usage over the longest window, from the ledger records of before this start
        (core/client_keys.usage_from_records), read off the event loop; what is counted meanwhile
        is replayed on top (KeyBook.adopt)."""
        config, keys = self.pool.config, self.pool.keys
        if config is None:
            return
        until = self._started_at
        store = LedgerStore(config.data_dir / "ledger")
        names = keys.names()

        def read():
            return usage_from_records(store.query(until - LONGEST_WINDOW - 86400, until), names, until, keys.prices)
        keys.start_rebuild()
        try:
            rebuilt = await asyncio.to_thread(read)
            keys.adopt(rebuilt)
            log.info("codex-pool: client key usage rebuilt from the ledger for %d key(s)", len(rebuilt))
        except Exception as e:
            keys.abandon_rebuild()  # what was counted live stays
            log.error("codex-pool: rebuilding client key usage from the ledger failed: %s", describe_error(e))

    # ---- requests --------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        keys = self.pool.keys
        if not (keys.on or keys.file_error) or not needs_key(flow.request.path):
            return
        try:
            presented = None
            for name, value in flow.request.headers.fields:
                lower = name.lower()
                if lower in KEY_HEADERS:
                    text = value.decode("latin-1")
                    presented = bearer(text) if lower == b"authorization" else text.strip()
                    if presented:
                        break
            check = keys.identify(presented, self.pool.now()) if keys.on else None
            if check is None or check.refusal is not None:
                flow.metadata[REFUSED] = check.refusal if check is not None else "keys_unreadable"
            else:
                flow.metadata[KEY] = check.key.name
        except Exception as e:
            log.error("codex-pool: reading the client key failed on %s: %s", flow.request.path, describe_error(e))
            flow.metadata[REFUSED] = "internal_error"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        keys = self.pool.keys
        if not (keys.on or keys.file_error) or not needs_key(flow.request.path):
            return
        try:
            refused = flow.metadata.get(REFUSED)
            if refused is not None or KEY not in flow.metadata:
                return self._unauthorized(flow, refused or "missing")
            key = keys.get(flow.metadata[KEY])
            now = self.pool.now()
            if key is None:  # revoked by an edit between its headers and its body
                return self._unauthorized(flow, "unknown")
            if paths.bare(flow.request.path) == USAGE_PATH:
                return answer(flow, 200, json_body({"key": key.name, "expires": key.expires,
                                                    "models": list(key.models) if key.models is not None else None,
                                                    "usage": keys.usage_of(key.name).snapshot(key.limits, now)}))
            model = ledger.model_from_body(body_decode.decode_body(
                flow.request.raw_content, flow.request.headers.get("content-encoding"), ledger.MODEL_SCAN_BYTES).data)
            refusal = keys.refusal(key, model, now)
            if refusal is None:
                keys.admit(key.name, now)
                return
            self.pool.metrics.refusal(f"limit_{refusal.limit}")
            if refusal.limit == "model":
                return answer_error(flow, 403, "invalid_request_error", "model_not_allowed", refusal.message,
                                    param="model")
            resets = int(refusal.resets_at) if refusal.resets_at is not None else int(now) + 60
            answer_error(flow, 429, "usage_limit_reached", "usage_limit_reached",
                         f"{refusal.message}; it resets at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(resets))}",
                         retry_after=max(1, resets - int(now)), resets_at=resets, param=None,
                         plan_type="codex-pool key")
        except Exception as e:
            log.error("codex-pool: checking the client key failed on %s: %s", flow.request.path, describe_error(e))
            answer_error(flow, 503, "internal_error", "proxy_internal_error",
                         f"codex-pool failed while checking the client key ({type(e).__name__}); not forwarded",
                         param=None)

    def _unauthorized(self, flow: http.HTTPFlow, reason: str) -> None:
        self.pool.metrics.refusal(reason)
        what = {"missing": "no client key was sent", "unknown": "the client key is not known",
                "revoked": "the client key was revoked", "expired": "the client key has expired",
                "keys_unreadable": "the proxy's keys file cannot be read"}.get(reason, "the client key was refused")
        # Codex's paths get 403: Codex 0.169.0 takes a 401 for its own token expiring, refreshes it
        # (writing new placeholder tokens over the key in its auth.json) and then asks the user to log
        # in again; a 403 it retries 5 times and then prints with this message (checked with the real
        # binary: tests/client/test_codex_keys.py). OpenAI-style clients get 401 (invalid API key).
        status = 403 if paths.bare(flow.request.path).startswith(paths.FORWARD_PREFIX) else 401
        answer_error(flow, status, "invalid_request_error", "invalid_api_key",
                     f"{what}: send 'Authorization: Bearer <your codex-pool key>' (ask the pool's admin for one: "
                     "scripts/keys create NAME)", param=None)
