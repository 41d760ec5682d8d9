"""`GET /backend-api/codex/models` is the same for every account: a recent copy (two minutes) is
answered locally instead of spending an account's request on it; an older one (up to a day) is
still answered at once while one background fetch with a usable account's credentials replaces it
(stale-while-revalidate). `GET /v1/models` is this request after mitm/openai_compat.py rewrote it.
Listed before `Verdicts`, so its `response` hook sees an upstream answer while the flow's exchange is
still open."""

from __future__ import annotations

import asyncio
import logging
import random

from mitmproxy import http

from codex_pool.core import paths
from codex_pool.core.pool import Pool
from codex_pool.mitm.flows import describe_error
from codex_pool.upstream.models_fetch import KEPT_HEADERS, fetch_catalogue
from codex_pool.upstream.tokens import TokenService

log = logging.getLogger("codex_pool")

MODELS_CACHE_SECONDS = 120.0
MODELS_STALE_SECONDS = 86400.0  # an older copy is answered while a background fetch replaces it
MAX_ENTRIES = 16  # one per distinct query (client_version=…)


class ModelsCache:
    def __init__(self, pool: Pool, tokens: TokenService):
        self.pool = pool
        self.tokens = tokens
        self._entries: dict[str, tuple[float, bytes, dict[str, str]]] = {}
        self._fetching: dict[str, asyncio.Task] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None or not is_models_list(flow):
            return
        try:
            path = flow.request.path
            cached = self._entries.get(path)
            age = self.pool.now() - cached[0] if cached is not None else None
            if age is None or age > MODELS_STALE_SECONDS:
                return  # forwarded; the answer fills the cache
            flow.response = http.Response.make(200, cached[1], cached[2])
            flow.comment = "models list from the proxy's cache"
            if age > MODELS_CACHE_SECONDS:
                flow.comment += f" ({int(age)} s old; refreshing it in the background)"
                self._refresh(path)
        except Exception as e:
            log.error("codex-pool: models cache failed on %s: %s", flow.request.path, describe_error(e))

    def done(self) -> None:
        for task in self._fetching.values():
            task.cancel()
        self._fetching.clear()

    def _refresh(self, path: str) -> None:
        """One background fetch per path at a time, with a usable account picked at random."""
        if path in self._fetching or self.tokens.http is None or not self.tokens.upstream_base:
            return
        usable = self.pool.registry.usable_names(self.pool.now())
        if not usable:
            return
        account = self.pool.registry.accounts[random.choice(usable)]
        task = asyncio.get_running_loop().create_task(self._fetch(path, account))
        self._fetching[path] = task

    async def _fetch(self, path: str, account) -> None:
        try:
            got = await fetch_catalogue(self.tokens.http, self.tokens.upstream_base + path, account)
            if got is not None:
                self._store(path, got[0], got[1])
            else:
                log.info("codex-pool: refreshing the models list with %s failed; the older copy stays", account.name)
        except Exception as e:
            log.error("codex-pool: refreshing the models list failed: %s", describe_error(e))
        finally:
            self._fetching.pop(path, None)

    def _store(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self._entries[path] = (self.pool.now(), body, headers)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.status_code != 200 or not is_models_list(flow):
            return
        if flow.id not in self.pool.exchanges:  # answered locally (this cache, an honest answer)
            return
        try:
            if response.raw_content:
                headers = {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
                self._store(flow.request.path, response.raw_content, headers)
        except Exception as e:
            log.error("codex-pool: models cache failed on %s: %s", flow.request.path, describe_error(e))


def is_models_list(flow: http.HTTPFlow) -> bool:
    return flow.request.method == "GET" and paths.bare(flow.request.path) == paths.MODELS
