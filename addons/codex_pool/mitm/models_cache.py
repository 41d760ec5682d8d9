"""`GET /backend-api/codex/models` is the same for every account: a recent copy (two minutes) is
answered locally instead of spending an account's request on it. Listed before `Verdicts`, so its
`response` hook sees an upstream answer while the flow's exchange is still open."""

from __future__ import annotations

import logging

from mitmproxy import http

from codex_pool.core import paths
from codex_pool.core.pool import Pool
from codex_pool.mitm.flows import describe_error

log = logging.getLogger("codex_pool")

MODELS_CACHE_SECONDS = 120.0
MAX_ENTRIES = 16  # one per distinct query (client_version=…)
KEPT_HEADERS = ("content-type", "content-encoding", "etag")


class ModelsCache:
    def __init__(self, pool: Pool):
        self.pool = pool
        self._entries: dict[str, tuple[float, bytes, dict[str, str]]] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None or not is_models_list(flow):
            return
        try:
            cached = self._entries.get(flow.request.path)
            if cached is None or self.pool.now() - cached[0] > MODELS_CACHE_SECONDS:
                return
            flow.response = http.Response.make(200, cached[1], cached[2])
            flow.comment = "models list from the proxy's cache"
        except Exception as e:
            log.error("codex-pool: models cache failed on %s: %s", flow.request.path, describe_error(e))

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.status_code != 200 or not is_models_list(flow):
            return
        if flow.id not in self.pool.exchanges:  # answered locally (this cache, an honest answer)
            return
        try:
            if response.raw_content:
                headers = {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
                self._entries[flow.request.path] = (self.pool.now(), response.raw_content, headers)
                while len(self._entries) > MAX_ENTRIES:
                    self._entries.pop(next(iter(self._entries)))
        except Exception as e:
            log.error("codex-pool: models cache failed on %s: %s", flow.request.path, describe_error(e))


def is_models_list(flow: http.HTTPFlow) -> bool:
    return flow.request.method == "GET" and paths.bare(flow.request.path) == paths.MODELS
