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
import math
import time
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode

from codex_pool.core import body_decode, paths
from codex_pool.core.addresses import is_loopback
from codex_pool.core.bodies import json_body
from codex_pool.core import failover
from codex_pool.core.client_keys import LONGEST_WINDOW, KeysError, bearer, model_of, usage_from_records
from codex_pool.core.pool import Pool
from codex_pool.mitm.flows import (KEY, answer, answer_error, describe_error, drop_client_credentials,
                                   is_upgrade)
from codex_pool.storage.files import mtime_ns
from codex_pool.storage.keys_file import load_keys
from codex_pool.storage.ledger_store import LedgerStore

log = logging.getLogger("codex_pool")

KEYS_CHECK_SECONDS = 1.0
REFUSED = "codex_pool.key_refused"  # flow.metadata: why the request has no usable key
USAGE_PATH = "/v1/usage"
KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key")
MAX_REFUSED_BODY = 1 << 20  # a request without a valid key announcing more than this is cut at its headers


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


class ClientAuth:
    def __init__(self, pool: Pool):
        self.pool = pool
        self._path: Path | None = None
        self._mtime: int | None = None
        self._task: asyncio.Task | None = None
        self._started_at = time.time()
        self._rebuilt = False  # usage has been rebuilt from the ledger once

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
            loop.create_task(self._rebuild_usage())  # else on the first load of a keys file

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _load(self, initial: bool = False) -> None:
        config = self.pool.config
        path = config.client_keys if config is not None else None
        if path is None:
            if self.pool.keys.on or self.pool.keys.file_error:
                log.warning("codex-pool: client_keys unset in mitm.yaml: client keys are off")
            self.pool.keys.load(None)
            self.pool.keys.file_error = None
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
        self.pool.keys.load(keyfile)
        log.info("codex-pool: %d client key(s) from %s", len(keyfile.keys), path)
        if not (config.prices if config else None):
            usd = [k.name for k in keyfile.keys if any(n.startswith("usd_") for n in k.limits)]
            if usd:
                log.warning("codex-pool: the US$ limits of %s count nothing: mitm.yaml has no prices (see README, "
                            "'Usage ledger')", ", ".join(usd))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(KEYS_CHECK_SECONDS)
            try:
                config = self.pool.config
                wanted = config.client_keys if config is not None else None
                if wanted != self._path or (self._path is not None and mtime_ns(self._path) != self._mtime):
                    was_on = self.pool.keys.on
                    self._load()  # mitm.yaml's client_keys changed, or the file did
                    if self.pool.keys.on and not was_on and not self._rebuilt:
                        asyncio.get_running_loop().create_task(self._rebuild_usage())
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
        self._rebuilt = True
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
        if not (keys.on or keys.file_error) or not paths.needs_key(flow.request.path):
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
                length = flow.request.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_REFUSED_BODY:
                    # mitmproxy would read the whole body before `request` answers: a client without
                    # a key gets no buffer of ours (the connection is closed instead of a 401)
                    self.pool.metrics.refusal(flow.metadata[REFUSED])
                    flow.kill()
            else:
                flow.metadata[KEY] = check.key.name
        except Exception as e:
            log.error("codex-pool: reading the client key failed on %s: %s", flow.request.path, describe_error(e))
            flow.metadata[REFUSED] = "internal_error"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        keys = self.pool.keys
        if not (keys.on or keys.file_error) or not paths.needs_key(flow.request.path):
            return
        try:
            refused = flow.metadata.get(REFUSED)
            if refused is not None or KEY not in flow.metadata:
                return self._unauthorized(flow, refused or "missing")
            now = self.pool.now()
            check = keys.check(flow.metadata[KEY], now)  # as it stands now: revoked or expired since its headers?
            if check.refusal is not None:
                return self._unauthorized(flow, check.refusal)
            key = check.key
            if paths.bare(flow.request.path) == USAGE_PATH:
                if flow.request.method not in ("GET", "HEAD"):
                    return answer_error(flow, 405, "invalid_request_error", "method_not_allowed", f"use GET {USAGE_PATH}",
                                        param=None)
                return answer(flow, 200, json_body({"key": key.name, "expires": key.expires,
                                                    "models": list(key.models) if key.models is not None else None,
                                                    "usage": keys.usage_of(key.name).snapshot(key.limits, now)}))
            if not is_model_request(flow):
                return  # a valid key suffices for side requests (models, plugins, settings): they cost no tokens
            if is_upgrade(flow):
                # A socket is not a turn: its turns are checked frame by frame (mitm/websockets.py) and
                # refused with an error frame, which Codex prints as a usage limit at once. A 429 on the
                # upgrade with Retry-After would make Codex 0.169.0 wait that long (up to a day) before
                # retrying, silently (seen with the real binary: tests/client/test_codex_keys.py).
                return
            if is_failover_retry(flow, self.pool, now):
                return  # the request it retries was admitted and checked: a turn is never cut by a limit
            model = None
            if key.models is not None:  # the model as the backend will read it, or no model at all
                decoded = body_decode.decode_body(flow.request.raw_content, flow.request.headers.get("content-encoding"))
                readable, model = model_of(decoded.data) if decoded.complete else (False, None)
                if not readable or model is None:
                    self.pool.metrics.refusal("limit_model")
                    return answer_error(flow, 403, "invalid_request_error", "model_not_allowed",
                                        f"the key {key.name!r} may use only {', '.join(key.models) or 'no model'}; "
                                        "this request names no model codex-pool can read", param="model")
            refusal = keys.refusal(key, model, now)
            if refusal is None:
                keys.admit(key.name, now)
                return
            self.pool.metrics.refusal(f"limit_{refusal.limit}")
            if refusal.limit == "model":
                return answer_error(flow, 403, "invalid_request_error", "model_not_allowed", refusal.message,
                                    param="model")
            resets = math.ceil(refusal.resets_at) if refusal.resets_at is not None else int(now) + 60
            answer_error(flow, 429, "usage_limit_reached", "usage_limit_reached",
                         f"{refusal.message}; it resets at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(resets))}",
                         retry_after=max(1, resets - int(now)), resets_at=resets, param=None,
                         plan_type="codex-pool key")
        except Exception as e:
            log.error("codex-pool: checking the client key failed on %s: %s", flow.request.path, describe_error(e))
            answer_error(flow, 503, "internal_error", "proxy_internal_error",
                         f"codex-pool failed while checking the client key ({type(e).__name__}); not forwarded",
                         param=None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # answered locally (mitmproxy calls this hook for those too): the key never stays on the flow.
        # Here, not in `response`: mitmproxy's own save addon (-w) writes the flow at its `response`,
        # which runs before a script's.
        if flow.id not in self.pool.exchanges and "codex_pool" not in flow.metadata:
            scrub_client_credentials(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.id not in self.pool.exchanges and "codex_pool" not in flow.metadata:
            scrub_client_credentials(flow)

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


MODEL_PATHS = frozenset({"/backend-api/codex/responses", "/backend-api/codex/responses/compact",
                         "/v1/chat/completions", "/v1/responses"})


def is_model_request(flow: http.HTTPFlow) -> bool:
    """A turn, or the socket its turns come on (those are checked frame by frame: mitm/websockets.py)."""
    return paths.bare(flow.request.path) in MODEL_PATHS and (flow.request.method == "POST" or is_upgrade(flow))


def is_failover_retry(flow: http.HTTPFlow, pool: Pool, now: float) -> bool:
    """The request comes back from one of the pool's own failover 307s (its marker names a live chain)."""
    marker = flow.request.query.get(failover.MARKER) if failover.MARKER in flow.request.path else None
    return marker is not None and pool.chains.find(marker, None, now) is not None


def scrub_client_credentials(flow: http.HTTPFlow) -> None:
    """Nothing a client identified itself with stays on a flow answered locally (mitmweb, saved
    flows): a forwarded flow's were replaced before it went upstream."""
    drop_client_credentials(flow.request.headers)
