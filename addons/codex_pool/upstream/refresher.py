"""Refreshing one account's tokens without ever losing it to a race.

- In-process: concurrent needs for one account share one refresh (single flight).
- Across processes: an fcntl lock beside the pool file (`pool/.alice.json.lock`) is held from
  the re-read to the write-back, so two proxies on one pool folder never both refresh.
- Under the lock the file is read again: tokens that changed on disk (another process, or the
  user replaced the file) are adopted instead of refreshed.
- A refresh token is never presented twice, across restarts too (storage/spent_tokens.py), and one
  refused for good is not presented again at all.
- The answer is written back atomically, keeping every key and the file's form (token_file.py).

No mitmproxy imports; the HTTP client is injected (one shared httpx.AsyncClient).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx

from codex_pool.core import refresh_policy
from codex_pool.core.auth_file import Account, AuthFileError
from codex_pool.storage.spent_tokens import SENT, SpentTokens
from codex_pool.storage.token_file import FileLock, TokenFileError, TokenSet, read_account, write_tokens

log = logging.getLogger("codex_pool")

REFRESHED, ADOPTED, PERMANENT, TRANSIENT = (refresh_policy.REFRESHED, refresh_policy.ADOPTED,
                                           refresh_policy.PERMANENT, refresh_policy.TRANSIENT)


@dataclass(frozen=True)
class RefreshResult:
    outcome: str  # refreshed | adopted | failed_permanent | failed_transient
    account: Account | None = None  # the account as it now stands (refreshed or adopted)
    code: str | None = None  # failure code, e.g. refresh_token_reused
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (REFRESHED, ADOPTED)


class Refresher:
    def __init__(self, client: httpx.AsyncClient, token_url: str, client_id: str = refresh_policy.CODEX_CLIENT_ID,
                 lock_timeout: float = 30.0, request_timeout: float = 30.0, spent: SpentTokens | None = None):
        self.client = client
        self.token_url = token_url
        self.client_id = client_id
        self.lock_timeout = lock_timeout
        self.request_timeout = request_timeout
        self._inflight: dict[str, asyncio.Task[RefreshResult]] = {}
        # refresh tokens presented (answer unknown) or refused: marked beside the pool file, so no
        # proxy on the pool folder presents them again, before or after a restart
        self.spent = spent if spent is not None else SpentTokens()
        self.calls = 0  # token endpoint calls made by this process

    async def refresh(self, account: Account, reason: str) -> RefreshResult:
        """Refresh (or adopt) `account`'s tokens; concurrent calls for one account share the work.

        The work runs as its own task: a caller that gives up (a timeout, a cancelled hook) never
        cancels a refresh others wait on, nor one whose refresh token is already on its way."""
        key = str(account.path)
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.get_running_loop().create_task(self._run(account, reason, key))
            self._inflight[key] = running
        return await asyncio.shield(running)

    async def _run(self, account: Account, reason: str, key: str) -> RefreshResult:
        try:
            return await self._refresh_locked(account, reason)
        except Exception as e:  # never let one refresh take the caller down
            return RefreshResult(TRANSIENT, None, "internal_error", f"{type(e).__name__}: {e}")
        finally:
            self._inflight.pop(key, None)

    async def _refresh_locked(self, account: Account, reason: str) -> RefreshResult:
        lock = FileLock(account.path)
        try:
            await asyncio.to_thread(lock.acquire, self.lock_timeout)
        except TimeoutError as e:
            return RefreshResult(TRANSIENT, None, "lock_timeout", str(e))
        try:
            try:
                disk = await asyncio.to_thread(read_account, account.path)
            except (OSError, AuthFileError) as e:
                return RefreshResult(TRANSIENT, None, "unreadable", f"{account.path.name}: {e}")
            if (disk.access_token, disk.refresh_token) != (account.access_token, account.refresh_token):
                return RefreshResult(ADOPTED, disk, None, "tokens changed on disk")
            if not disk.refresh_token:
                return RefreshResult(PERMANENT, None, "no_refresh_token",
                                     f"{account.path.name} has no refresh token")
            mark = await asyncio.to_thread(self.spent.status, disk.path, disk.refresh_token)
            if mark is not None and mark != SENT:  # refused for good before (another proxy, or before a restart)
                return RefreshResult(PERMANENT, None, mark, f"this refresh token was refused before ({mark})")
            if mark == SENT:
                return RefreshResult(TRANSIENT, None, "already_presented",
                                     "this refresh token was already presented and its answer lost; waiting for the file to change")
            return await self._call_token_endpoint(disk, reason)
        finally:
            await asyncio.to_thread(lock.release)

    async def _call_token_endpoint(self, disk: Account, reason: str) -> RefreshResult:
        assert disk.refresh_token is not None
        token = disk.refresh_token
        await asyncio.to_thread(self.spent.sent, disk.path, token)  # marked before it leaves: a kill now still knows
        self.calls += 1
        payload = {"client_id": self.client_id, "grant_type": "refresh_token", "refresh_token": disk.refresh_token,
                   "refresh_reason": reason}
        try:
            resp = await self.client.post(self.token_url, json=payload, timeout=self.request_timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            await asyncio.to_thread(self.spent.clear, disk.path)  # never reached the server: safe to present again
            return RefreshResult(TRANSIENT, None, "network_error", type(e).__name__)
        except httpx.HTTPError as e:
            # Sent, but the answer was lost: the token may have been consumed. Presenting it again
            # could only earn refresh_token_reused, so wait for the file to change instead.
            return RefreshResult(TRANSIENT, None, "answer_lost", f"{type(e).__name__}; the refresh token may be spent")
        if resp.status_code != 200:
            # The server answered without new tokens. Refused for good: never again. Otherwise (a
            # 5xx) it was not rotated, and a later retry may present it again.
            kind, code = refresh_policy.classify_failure(resp.status_code, resp.content)
            if kind == "permanent":
                await asyncio.to_thread(self.spent.refused, disk.path, token, code)
            else:
                await asyncio.to_thread(self.spent.clear, disk.path)
            return RefreshResult(PERMANENT if kind == "permanent" else TRANSIENT, None, code,
                                 f"token endpoint answered {resp.status_code} ({code})")
        try:
            answer = resp.json()
            access = answer["access_token"]
            if not isinstance(access, str) or not access:
                raise KeyError("access_token")
        except (ValueError, KeyError, TypeError):
            return RefreshResult(TRANSIENT, None, "bad_answer", "token endpoint answer had no access_token")
        tokens = TokenSet(access, answer.get("id_token") or None, answer.get("refresh_token") or None)
        now = datetime.now(timezone.utc)
        try:
            await asyncio.to_thread(write_tokens, disk.path, tokens, now)
            await asyncio.to_thread(self.spent.clear, disk.path)  # the file holds the new token now
            fresh = await asyncio.to_thread(read_account, disk.path)
        except (OSError, TokenFileError, AuthFileError) as e:
            log.error("codex-pool: refreshed %s but could not write %s (%s); the new tokens live in memory only",
                      disk.name, disk.path, e)
            fresh = _with_tokens(disk, tokens)
        return RefreshResult(REFRESHED, fresh, None, "refreshed")


def _with_tokens(account: Account, tokens: TokenSet) -> Account:
    from dataclasses import replace

    from codex_pool.core.auth_file import decode_claims

    try:
        claims = decode_claims(tokens.access_token)
    except AuthFileError:
        claims = {}
    exp, iat = claims.get("exp"), claims.get("iat")
    return replace(
        account,
        access_token=tokens.access_token,
        id_token=tokens.id_token or account.id_token,
        refresh_token=tokens.refresh_token or account.refresh_token,
        access_expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
        access_issued_at=float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None,
        last_refresh=datetime.fromtimestamp(time.time(), timezone.utc),
    )
