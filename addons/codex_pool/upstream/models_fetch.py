"""Fetching the backend's model catalogue (`GET /backend-api/codex/models?…`) with one pool account's
credentials, for the proxy's own cache (mitm/models_cache.py refreshes a stale copy in the
background). No mitmproxy imports; the HTTP client is injected. Never raises: None when the
catalogue could not be had (the stale copy is then kept)."""

from __future__ import annotations

import httpx

from codex_pool.core.auth_file import Account

KEPT_HEADERS = ("content-type", "content-encoding", "etag")
MAX_CATALOGUE_BYTES = 4 << 20


async def fetch_catalogue(client: httpx.AsyncClient, url: str, account: Account) -> tuple[bytes, dict[str, str]] | None:
    headers = {"authorization": f"Bearer {account.access_token}", "chatgpt-account-id": account.account_id,
               "accept": "application/json", "user-agent": "codex-pool"}
    try:
        async with client.stream("GET", url, headers=headers, timeout=20.0) as resp:
            if resp.status_code != 200:
                return None
            body = bytearray()
            async for piece in resp.aiter_bytes():  # decoded; read no further than the cap
                body += piece
                if len(body) > MAX_CATALOGUE_BYTES:
                    return None
            kept = {k: v for k, v in resp.headers.items() if k.lower() in KEPT_HEADERS and k.lower() != "content-encoding"}
            return bytes(body), kept  # httpx has undone any content-encoding
    except httpx.HTTPError:
        return None
