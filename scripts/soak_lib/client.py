"""Codex-like clients for the soak: multi-turn conversations with think time, over HTTP/SSE or
WebSocket, retrying exactly as Codex CLI 0.169.0 does (../shared/reference/codex-protocol.md,
"Errors, and what the client does with them") and no more:

* 307 (and 308) to the same origin: followed at once with the body re-sent, up to 10 hops.
* 500/502/503/504 (any 5xx) and a dropped connection: up to 4 transport retries of the request,
  `backoff(n)` apart (200 ms × 2^(n-1), ±10 % jitter) or the Retry-After given; then the turn
  fails with a retryable error.
* A stream that ends (or goes silent for IDLE_TIMEOUT) before `response.completed`, a turn whose
  transport retries ran out, a 429 with Retry-After (N s later), a 403, a `response.failed` ("try
  again in Ns" honoured): turn-level retries, at most 5 per turn (stream_max_retries), `backoff`
  apart unless the server said when.
* Fatal at once: 429 `usage_limit_reached` / `usage_not_included`, a 429 without Retry-After, a
  401 (Codex would refresh its *own* token against the real auth server: always a failure here),
  other 4xx, `response.failed` with `context_length_exceeded` / `insufficient_quota` /
  `usage_not_included`.
* WebSocket: an upgrade refused with 5xx (the proxy's 503 `account_switch`) or a connection error
  is a transport retry; 426 falls back to HTTP/SSE for good; 429 or 401 on the upgrade is fatal.
  An error frame with status 5xx, or a socket that closes mid-turn, closes the socket and retries
  the turn on a new one (which starts with a `generate: false` prewarm carrying the history); a
  429 usage-limit frame is fatal. Later turns on a socket send `previous_response_id` and only
  the new input.

One difference, for a time-compressed day: a stream silent for IDLE_TIMEOUT (30 s, Codex: 300 s)
is given up and retried like Codex does at 300 s. The proxy's own watchdog (3 s in the soak) should
always act first; the soak counts how often a client had to (goal 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

RESPONSES = "/backend-api/codex/responses"
MODELS = "/backend-api/codex/models?client_version=0.169.0"
CLIENT_TOKEN = "soak-client-placeholder-token"  # the proxy replaces it; never a pool token
CLIENT_ACCOUNT = "soak-client-placeholder-account"

REQUEST_MAX_RETRIES = 4  # Codex's request_max_retries (transport retries)
STREAM_MAX_RETRIES = 5  # Codex's stream_max_retries (turn-level retries)
MAX_REDIRECTS = 10  # reqwest's default redirect policy
IDLE_TIMEOUT = 30.0  # Codex: stream_idle_timeout_ms 300000; compressed here (see above)
FATAL_FAILED_CODES = {"context_length_exceeded", "insufficient_quota", "usage_not_included"}
USAGE_LIMIT_TYPES = {"usage_limit_reached", "usage_not_included"}

TOOLS = [
    {
        "type": "function",
        "name": "exec_command",
        "description": "Runs a command in a PTY, returning output or a session ID for ongoing interaction.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {
                "cmd": {"type": "string", "description": "Shell command to execute."},
                "workdir": {"type": "string", "description": "Optional working directory."},
                "yield_time_ms": {"type": "number", "description": "How long to wait for output."},
            },
            "required": ["cmd"],
            "additionalProperties": False,
        },
    }
]

WORDS = ("the pool proxy routes every turn of a conversation to one account so its prompt cache stays warm "
         "while tokens rotate and limits reset refresh failover stream watchdog ledger sticky").split()


def backoff(attempt: int, rng: random.Random) -> float:
    """Codex's backoff: 200 ms × 2^(attempt-1), jitter 0.9–1.1."""
    return 0.2 * (2 ** max(0, attempt - 1)) * rng.uniform(0.9, 1.1)


def uuid7() -> str:
    """A UUIDv7 (Codex's thread ids): 48-bit ms timestamp, then random bits."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def text_of(rng: random.Random, nbytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def message(role: str, text: str) -> dict:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


@dataclass
class TurnRecord:
    """One model request of a conversation as the client lived it (retries included)."""

    client: int
    proxy: int
    transport: str  # http | ws (the transport the turn ended on)
    conversation: str
    index: int  # request number within the conversation
    started: float
    ended: float = 0.0
    ok: bool = False
    error: str | None = None  # why it finally failed
    fatal: str | None = None  # "usage_limit" | "unauthorized" | "retries_exhausted" | "client_error" | ...
    account: str | None = None  # from the answer text ("Answer from fake account X.")
    requests: int = 0  # HTTP requests / WebSocket upgrades + response.create frames sent
    redirects: int = 0
    transport_retries: int = 0
    turn_retries: int = 0
    idle_timeouts: int = 0
    tool_followup: bool = False
    request_ids: list = field(default_factory=list)  # (x-client-request-id, how) for every send


class TurnFailed(Exception):
    def __init__(self, kind: str, detail: str, *, retryable: bool, delay: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retryable, self.delay = kind, detail, retryable, delay


@dataclass
class Answer:
    response_id: str | None
    output: list
    account: str | None


def _account_from(output: list) -> str | None:
    for item in output:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                text = part.get("text") or ""
                if text.startswith("Answer from fake account "):
                    return text[len("Answer from fake account "):].split(".", 1)[0]
    return None


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _failed_delay(message_text: str) -> float | None:
    """Codex reads "try again in N s" / "Ns" / "N ms" from a response.failed message."""
    import re

    m = re.search(r"try again in\s*([0-9.]+)\s*(ms|s|seconds?)?", message_text or "", re.I)
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000.0 if (m.group(2) or "").lower() == "ms" else value


class SoakClient:
    """One simulated Codex user: conversations one after another on one proxy."""

    def __init__(self, index: int, proxy_index: int, proxy_url: str, transport: str, seed: int,
                 records: list[TurnRecord], conversations: dict[str, dict], think: tuple[float, float]):
        self.index = index
        self.proxy_index = proxy_index
        self.base = proxy_url
        self.ws_base = "ws://" + proxy_url.split("://", 1)[1]
        self.transport = transport  # "http" or "ws"; a 426 on the upgrade makes it "http" for good
        self.rng = random.Random(seed)
        self.records = records
        self.conversations = conversations
        self.think = think
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=IDLE_TIMEOUT, write=10.0, pool=10.0),
            trust_env=False, follow_redirects=False,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )
        self.ws = None  # the open socket of this session (WebSocket clients)
        self.ws_last_response: str | None = None
        self.ws_known = 0  # history items the socket's response chain covers
        self.stop_at = 0.0
        self.models_status: int | None = None
        self.fell_back_to_http = False

    # ------------------------------------------------------------------ the user's day

    async def run(self, deadline: float) -> None:
        self.stop_at = deadline
        try:
            await self._models()
            while time.time() < deadline:
                await self._conversation(deadline)
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            await self._close_ws()
            await self.http.aclose()

    async def _models(self) -> None:
        try:
            r = await self.http.get(self.base + MODELS, headers=self._headers(None, None))
            self.models_status = r.status_code
        except httpx.HTTPError as e:
            self.models_status = -1
            del e

    async def _conversation(self, deadline: float) -> None:
        rng = self.rng
        conv = uuid7()
        base = text_of(rng, rng.randint(6000, 14000))  # Codex's base instructions and context
        history: list[dict] = [{"type": "message", "role": "developer",
                                "content": [{"type": "input_text", "text": base}]}]
        self.conversations[conv] = {"client": self.index, "proxy": self.proxy_index, "transport": self.transport,
                                    "started": time.time()}
        turns = rng.randint(4, 14)
        session_left = 0
        n = 0
        for _ in range(turns):
            if time.time() >= deadline:
                break
            if self.transport == "ws" and session_left <= 0:  # a new `codex exec resume`: a new socket
                await self._close_ws()
                session_left = rng.randint(2, 5)
            session_left -= 1
            text = text_of(rng, rng.randint(80, 600))
            tool = rng.random() < 0.15
            if tool:
                text += " RUN_TOOL"
            new = [message("user", text)]
            _record, answer = await self._turn(conv, n, history, new, followup=False)
            n += 1
            if answer is None:
                break  # the user gives up on this conversation (Codex exited with the error)
            history += new + answer.output
            calls = [i for i in answer.output if i.get("type") == "function_call"]
            if calls:  # Codex runs the tool and sends its output at once, same turn
                out = [{"type": "function_call_output", "call_id": c["call_id"], "output": "tool-ok"} for c in calls]
                _record, answer = await self._turn(conv, n, history, out, followup=True)
                n += 1
                if answer is None:
                    break
                history += out + answer.output
            await asyncio.sleep(rng.uniform(*self.think))
        await self._close_ws()
        self.conversations[conv]["ended"] = time.time()
        self.conversations[conv]["requests"] = n

    async def _turn(self, conv: str, n: int, history: list, new: list, followup: bool):
        rec = TurnRecord(self.index, self.proxy_index, self.transport, conv, n, time.time(), tool_followup=followup)
        self.records.append(rec)
        retries = 0
        while True:
            try:
                if self.transport == "ws":
                    answer = await self._ws_turn(rec, conv, history, new)
                else:
                    answer = await self._http_turn(rec, conv, history + new)
                rec.ok, rec.account, rec.ended = True, answer.account, time.time()
                rec.transport = self.transport
                return rec, answer
            except TurnFailed as f:
                if not f.retryable or retries >= STREAM_MAX_RETRIES:
                    rec.ok, rec.ended = False, time.time()
                    rec.error = f"{f.kind}: {f.detail}" + ("" if not f.retryable else f" (after {retries} turn retries)")
                    rec.fatal = f.kind if not f.retryable else "retries_exhausted"
                    rec.transport = self.transport
                    return rec, None
                retries += 1
                rec.turn_retries = retries
                await asyncio.sleep(f.delay if f.delay is not None else backoff(retries, self.rng))

    def _headers(self, conv: str | None, rid: str | None) -> dict[str, str]:
        h = {
            "authorization": f"Bearer {CLIENT_TOKEN}",
            "chatgpt-account-id": CLIENT_ACCOUNT,
            "originator": "codex_exec",
            "user-agent": "codex_exec/0.169.0 (soak)",
        }
        if conv:
            h.update({"session-id": conv, "thread-id": conv})
        if rid:
            h["x-client-request-id"] = rid
        return h

    def _body(self, conv: str, items: list, **extra: Any) -> dict:
        return {
            "model": "gpt-5.1-codex",
            "input": items,
            "tools": TOOLS,
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": False,
            "stream": True,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": conv,
            "client_metadata": {"session_id": conv},
            **extra,
        }

    # ------------------------------------------------------------------ HTTP / SSE

    async def _http_turn(self, rec: TurnRecord, conv: str, items: list) -> Answer:
        body = json.dumps(self._body(conv, items)).encode()
        tries = 0
        while True:
            try:
                return await self._http_request(rec, conv, body, "transport_retry" if tries else
                                                ("turn_retry" if rec.turn_retries else "first"))
            except _Transport as t:
                if tries >= REQUEST_MAX_RETRIES:
                    raise TurnFailed(t.kind, t.detail + f" (after {tries} transport retries)", retryable=True) from None
                tries += 1
                rec.transport_retries += 1
                await asyncio.sleep(t.delay if t.delay is not None else backoff(tries, self.rng))

    async def _http_request(self, rec: TurnRecord, conv: str, body: bytes, how: str) -> Answer:
        url = self.base + RESPONSES
        hops = 0
        while True:
            rid = uuid.uuid4().hex
            rec.request_ids.append((rid, how))
            rec.requests += 1
            headers = {**self._headers(conv, rid), "accept": "text/event-stream", "content-type": "application/json"}
            try:
                async with self.http.stream("POST", url, content=body, headers=headers) as resp:
                    if resp.status_code in (307, 308):
                        location = resp.headers.get("location")
                        await resp.aread()
                        hops += 1
                        if not location or hops > MAX_REDIRECTS:
                            raise TurnFailed("redirects", f"{hops} redirects", retryable=False)
                        url = urljoin(url, location)
                        rec.redirects += 1
                        how = "redirect"
                        continue
                    if resp.status_code != 200:
                        raw = await resp.aread()
                        raise self._http_error(resp.status_code, resp.headers, raw)
                    return await self._read_sse(rec, resp)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout, httpx.WriteTimeout) as e:
                if getattr(e, "_soak_streaming", False):
                    raise TurnFailed("stream_cut", type(e).__name__, retryable=True) from None
                raise _Transport("connection", type(e).__name__) from None
            except httpx.ReadTimeout:
                rec.idle_timeouts += 1
                raise TurnFailed("idle_timeout", f"nothing for {IDLE_TIMEOUT:.0f} s", retryable=True) from None

    def _http_error(self, status: int, headers, raw: bytes) -> Exception:
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            doc = {}
        err = doc.get("error") if isinstance(doc, dict) else None
        err = err if isinstance(err, dict) else {}
        etype, code = err.get("type"), err.get("code")
        after = _retry_after(headers)
        detail = f"{status} {etype or ''}/{code or ''}: {str(err.get('message') or '')[:160]}"
        if status >= 500:
            return _Transport(f"http_{status}", detail, after)
        if status == 429:
            if etype in USAGE_LIMIT_TYPES or code in USAGE_LIMIT_TYPES:
                return TurnFailed("usage_limit", detail, retryable=False)
            if after is not None:
                return TurnFailed("rate_limited", detail, retryable=True, delay=after)
            return TurnFailed("http_429", detail, retryable=False)
        if status == 401:
            return TurnFailed("unauthorized", detail, retryable=False)
        if status == 403:
            return TurnFailed("forbidden", detail, retryable=True)
        return TurnFailed(f"http_{status}", detail, retryable=False)

    async def _read_sse(self, rec: TurnRecord, resp: httpx.Response) -> Answer:
        data_lines: list[str] = []
        try:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data_lines.append(line[5:].strip())
                    continue
                if line.strip() or not data_lines:
                    continue
                event = json.loads("\n".join(data_lines))
                data_lines = []
                done = self._terminal(event)
                if done is not None:
                    return done
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            e._soak_streaming = True  # type: ignore[attr-defined]
            raise
        except httpx.ReadTimeout:
            raise
        raise TurnFailed("stream_cut", "stream ended before response.completed", retryable=True)

    def _terminal(self, event: dict) -> Answer | None:
        etype = event.get("type")
        if etype == "response.completed":
            response = event.get("response") or {}
            output = response.get("output") or []
            return Answer(response.get("id"), output, _account_from(output))
        if etype in ("response.failed", "response.incomplete"):
            err = ((event.get("response") or {}).get("error")) or {}
            code = err.get("code")
            if code in FATAL_FAILED_CODES:
                raise TurnFailed("failed_" + str(code), str(err.get("message"))[:160], retryable=False)
            raise TurnFailed("response_failed", f"{code}: {str(err.get('message'))[:160]}", retryable=True,
                             delay=_failed_delay(str(err.get("message") or "")))
        return None

    # ------------------------------------------------------------------ WebSocket

    async def _close_ws(self) -> None:
        ws, self.ws = self.ws, None
        self.ws_last_response, self.ws_known = None, 0
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 3)
            except Exception:  # noqa: BLE001 - it is going away either way
                pass

    async def _ws_turn(self, rec: TurnRecord, conv: str, history: list, new: list) -> Answer:
        try:
            if self.ws is None:
                await self._ws_open(rec, conv)
                if self.transport != "ws":  # 426: HTTP/SSE from now on
                    return await self._http_turn(rec, conv, history + new)
                prewarm = await self._ws_request(rec, self._body(conv, history, type="response.create", generate=False))
                self.ws_last_response, self.ws_known = prewarm.response_id, len(history)
            items = (history + new)[self.ws_known:]
            extra = {"type": "response.create"}
            if self.ws_last_response:
                extra["previous_response_id"] = self.ws_last_response
            answer = await self._ws_request(rec, self._body(conv, items, **extra))
            self.ws_last_response, self.ws_known = answer.response_id, len(history) + len(new) + len(answer.output)
            return answer
        except TurnFailed as f:
            if f.retryable and f.kind != "response_failed":
                await self._close_ws()  # Codex opens a new socket for the retry
            raise

    async def _ws_open(self, rec: TurnRecord, conv: str) -> None:
        tries = 0
        while True:
            rid = uuid.uuid4().hex
            rec.request_ids.append((rid, "upgrade"))
            rec.requests += 1
            headers = {**self._headers(conv, rid), "openai-beta": "responses_websockets=2026-02-06"}
            try:
                self.ws = await ws_connect(self.ws_base + RESPONSES, additional_headers=headers, open_timeout=10,
                                           max_size=None, ping_interval=None, close_timeout=2,
                                           user_agent_header=None)
                self.ws_last_response, self.ws_known = None, 0
                return
            except InvalidStatus as e:
                status = e.response.status_code
                if status == 426:
                    self.transport, self.fell_back_to_http = "http", True
                    return
                err = self._http_error(status, e.response.headers, e.response.body or b"")
                if status == 404:
                    err = _Transport("http_404", "upgrade answered 404")
                if not isinstance(err, _Transport):
                    if status == 429:
                        raise TurnFailed("usage_limit" if isinstance(err, TurnFailed) and err.kind == "usage_limit"
                                         else "http_429", "429 on the WebSocket upgrade", retryable=False) from None
                    raise err from None
                transport_err = err
            except (OSError, InvalidHandshake, asyncio.TimeoutError, TimeoutError) as e:
                transport_err = _Transport("connection", f"upgrade: {type(e).__name__}")
            if tries >= REQUEST_MAX_RETRIES:
                raise TurnFailed(transport_err.kind, transport_err.detail + f" (after {tries} transport retries)",
                                 retryable=True)
            tries += 1
            rec.transport_retries += 1
            await asyncio.sleep(transport_err.delay if transport_err.delay is not None else backoff(tries, self.rng))

    async def _ws_request(self, rec: TurnRecord, body: dict) -> Answer:
        ws = self.ws
        assert ws is not None
        rec.requests += 1
        try:
            await ws.send(json.dumps(body))
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), IDLE_TIMEOUT)
                except (asyncio.TimeoutError, TimeoutError):
                    rec.idle_timeouts += 1
                    raise TurnFailed("idle_timeout", f"nothing for {IDLE_TIMEOUT:.0f} s", retryable=True) from None
                frame = json.loads(raw)
                if frame.get("type") == "error":
                    raise self._ws_error(frame)
                done = self._terminal(frame)
                if done is not None:
                    return done
        except ConnectionClosed as e:
            raise TurnFailed("stream_cut", f"socket closed mid-turn ({e.rcvd.code if e.rcvd else 'no close frame'})",
                             retryable=True) from None

    def _ws_error(self, frame: dict) -> TurnFailed:
        status = frame.get("status")
        err = frame.get("error") if isinstance(frame.get("error"), dict) else {}
        etype, code = err.get("type"), err.get("code")
        detail = f"error frame {status} {etype or ''}/{code or ''}: {str(err.get('message') or '')[:160]}"
        if status == 429 and (etype in USAGE_LIMIT_TYPES or code in USAGE_LIMIT_TYPES):
            return TurnFailed("usage_limit", detail, retryable=False)
        if status == 401:
            return TurnFailed("unauthorized", detail, retryable=False)
        if isinstance(status, int) and status >= 500:
            return TurnFailed(f"ws_error_{status}", detail, retryable=True)
        return TurnFailed(f"ws_error_{status}", detail, retryable=False)


class _Transport(Exception):
    """A request-level failure Codex retries as a transport error (5xx, connection)."""

    def __init__(self, kind: str, detail: str, delay: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.delay = kind, detail, delay


def record_dict(rec: TurnRecord) -> dict:
    d = asdict(rec)
    d["request_ids"] = [list(x) for x in rec.request_ids]
    return d
