"""asyncio HTTP/1.1 + WebSocket server (h11 + wsproto) simulating the ChatGPT backend Codex uses.

Routes (see README-style docstring in `__init__`):
  /backend-api/codex/responses            POST (SSE) and GET + Upgrade: websocket
  /backend-api/codex/responses/compact    POST
  /backend-api/codex/models               GET
  /backend-api/wham/usage                 GET
  /backend-api/wham/accounts/check        GET
  /backend-api/ps/*, wham/settings/user, … side requests (side.py)
  /backend-api/*                          404 JSON
  /oauth/token                            POST (refresh_token grant)
  /_fake/*                                control API (JSON)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import ssl
import time
import zlib
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token, split_comma_header

from . import models as models_mod
from . import responses as R
from . import rules as rules_mod
from . import side as side_mod
from .state import Account, BackendState, Config, ControlError, Fault, Schedule

log = logging.getLogger("fake_chatgpt")

MAX_BODY = 256 * 1024 * 1024
DEFAULT_BACKLOG = 512
SERVER_HEADER = "fake-chatgpt"

RESPONSES_PATH = "/backend-api/codex/responses"


class _Drop(Exception):
    """Close the client connection now, without (further) answer."""


@dataclasses.dataclass
class Outcome:
    """What to answer to one model request (HTTP POST or WebSocket response.create)."""

    kind: str  # "error" | "drop" | "stream"
    status: int = 200
    body: dict | None = None
    headers: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)
    delay: float = 0.0
    cut_after: int | None = None
    hang: float = 0.0  # seconds before anything at all is sent (the `hang` fault)
    fault: str | None = None
    response_id: str | None = None
    on_complete: Callable[[], None] | None = None
    usage: dict | None = None  # the usage a completed answer reports (logged with `completed`)
    huge: tuple[str, int] | None = None  # the `huge_event` fault (HTTP turns): (shape, bytes)


def _error_body(message: str, type_: str | None, code: str | None, status: int | None = None, **extra) -> dict:
    err = {"message": message, "type": type_, "param": None, "code": code}
    err.update(extra)
    body = {"error": err}
    if status is not None:
        body["status"] = status
    return body


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _default_error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    """Undo Content-Encoding (zstd, gzip, deflate, br; comma-separated chains)."""
    if not encoding:
        return raw
    for enc in reversed([e.strip().lower() for e in encoding.split(",") if e.strip()]):
        if enc in ("identity",):
            continue
        if enc == "zstd":
            try:
                from compression import zstd  # Python 3.14+
            except ImportError:
                from backports import zstd  # what mitmproxy 12.3 installs below 3.14

            raw = zstd.decompress(raw)  # every frame
        elif enc in ("gzip", "x-gzip"):
            raw = gzip.decompress(raw)
        elif enc == "deflate":
            try:
                raw = zlib.decompress(raw)
            except zlib.error:
                raw = zlib.decompress(raw, -zlib.MAX_WBITS)
        elif enc == "br":
            import brotli

            raw = brotli.decompress(raw)
        else:
            raise ValueError(f"unsupported content-encoding {enc!r}")
    return raw


class FakeChatGPT:
    """The simulated backend. Usable in-process::

        fake = FakeChatGPT()
        await fake.start()
        auth = fake.add_account("alice")        # auth.json dict
        ... fake.url, fake.port, fake.state ...
        await fake.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: Config | dict | None = None,
        plan: str = "plus",
        backlog: int = DEFAULT_BACKLOG,
        ssl_context: ssl.SSLContext | None = None,
        pool_dir: str | None = None,
    ):
        if isinstance(config, dict):
            cfg = Config()
            cfg.update(config)
            config = cfg
        self.host = host
        self._port = port
        self.backlog = max(128, backlog)
        self.ssl_context = ssl_context
        self.state = BackendState(config, default_plan=plan)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.pool_dir = pool_dir  # where `login` with write:true puts <name>.json (the CLI's --pool-dir)
        self.schedule = Schedule()
        self._schedule_task: asyncio.Task | None = None
        self._schedule_wake: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def port(self) -> int:
        return self._port

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self._port}"

    async def start(self) -> "FakeChatGPT":
        self._server = await asyncio.start_server(
            self._on_connection,
            self.host,
            self._port,
            backlog=self.backlog,
            ssl=self.ssl_context,
            reuse_address=True,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._schedule_wake = asyncio.Event()
        self._schedule_task = asyncio.get_running_loop().create_task(self._run_schedule())
        return self

    async def stop(self) -> None:
        if self._schedule_task is not None:
            self._schedule_task.cancel()
            with contextlib.suppress(BaseException):
                await self._schedule_task
            self._schedule_task = None
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> "FakeChatGPT":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def add_account(self, name: str | None = None, **kwargs: Any) -> dict:
        """Create an account; returns its auth.json dict. kwargs: email, plan, access_ttl_seconds,
        account_id, user_id, and figures such as primary_used_percent."""
        return self.state.add_account(name, **kwargs)

    # ------------------------------------------------------------------ timed actions

    def add_schedule(self, specs: list) -> list[dict]:
        """Schedule actions (`at`: seconds from now); see `state.SCHEDULE_ACTIONS`."""
        added = self.schedule.add(specs, self.state.accounts, time.time())
        if self._schedule_wake is not None:
            self._schedule_wake.set()
        return added

    def write_pool_file(self, name: str, auth: dict) -> str:
        """Write `<pool_dir>/<name>.json` (0600, atomically), as the CLI's --pool-dir does."""
        if not self.pool_dir:
            raise ControlError("this server has no pool folder (start it with --pool-dir) to write to")
        from .cli import make_pool_dir, write_auth_file  # the CLI owns the file format

        make_pool_dir(self.pool_dir)
        return write_auth_file(self.pool_dir, name, auth)

    async def _run_schedule(self) -> None:
        assert self._schedule_wake is not None
        while True:
            due = self.schedule.next_due()
            wait = None if due is None else due["at_unix"] - time.time()
            if wait is None or wait > 0:
                self._schedule_wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._schedule_wake.wait(), wait)
                continue
            action = self.schedule.take()
            try:
                result = self.run_action(action)
                self.schedule.record(action, time.time(), None, result)
            except Exception as exc:  # noqa: BLE001 - a bad action is recorded, the schedule goes on
                self.schedule.record(action, time.time(), str(exc) or type(exc).__name__, None)

    def run_action(self, action: dict) -> dict | None:
        """Run one scheduled action now; returns a summary without tokens."""
        st, kind, name = self.state, action["do"], action.get("account")
        now = time.time()
        if kind == "fault":
            return {"fault_id": st.add_fault(action["fault"]).id}
        if kind == "clear_faults":
            return {"cleared": st.clear_faults(name, everything=name is None)}
        if kind == "limit":
            acct = st.limit(name, action.get("seconds"), action.get("window", "primary"))
            return {"reset_at": acct["primary_reset_at"] if action.get("window", "primary") == "primary"
                    else acct["secondary_reset_at"]}
        if kind == "revoke":
            st.revoke(name, refresh_only=bool(action.get("refresh_only")))
            return {"scope": st.accounts[name].revoke_scope}
        if kind == "login":
            auth = st.issue_tokens(name, access_ttl=action.get("access_ttl_seconds"))
            write = action.get("write", self.pool_dir is not None)
            return {"path": self.write_pool_file(name, auth)} if write else {"path": None}
        if kind == "expire":
            return {"expired": st.expire_access(name, now)}
        if kind == "account":
            st.update_account(name, action["changes"])
            return None
        if kind == "config":
            st.config.update(action["changes"])
            return None
        raise ControlError(f"unknown scheduled action {kind!r}")

    # ------------------------------------------------------------------ connection loop

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                got = await self._read_request(conn, reader, writer)
                if got is None:
                    break
                req, body = got
                keep = await self._dispatch(conn, reader, writer, req, body)
                if not keep:
                    break
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    break
        except (_Drop, ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            return event

    async def _read_request(self, conn, reader, writer):
        try:
            event = await self._next_event(conn, reader)
        except h11.RemoteProtocolError:
            with contextlib.suppress(Exception):
                await self._send_json(conn, writer, 400, {"error": {"message": "bad request"}})
            return None
        if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Request):
            return None
        req = event
        if conn.they_are_waiting_for_100_continue:
            await self._send(conn, writer, h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._next_event(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _Drop()
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.PAUSED:
                break
            else:
                return None
        return req, bytes(body)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, event) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await writer.drain()

    async def _send_json(self, conn, writer, status: int, obj, headers=()) -> bytes:
        payload = json.dumps(obj).encode()
        hdrs = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("server", SERVER_HEADER),
            *headers,
        ]
        await self._send(conn, writer, h11.Response(status_code=status, headers=hdrs, reason=_reason(status)))
        await self._send(conn, writer, h11.Data(data=payload))
        await self._send(conn, writer, h11.EndOfMessage())
        return payload

    async def _send_empty(self, conn, writer, status: int, headers=()) -> None:
        hdrs = [("content-length", "0"), ("server", SERVER_HEADER), *headers]
        await self._send(conn, writer, h11.Response(status_code=status, headers=hdrs, reason=_reason(status)))
        await self._send(conn, writer, h11.EndOfMessage())

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, conn, reader, writer, req: h11.Request, body: bytes) -> bool:
        target = req.target.decode("latin-1")
        parts = urlsplit(target)
        path, query = parts.path, parts.query
        method = req.method.decode("ascii", "replace").upper()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        wants_upgrade = conn.their_state is h11.MIGHT_SWITCH_PROTOCOL

        if path.startswith("/_fake/") or path == "/_fake":
            return await self._control(conn, writer, method, path, query, body)

        is_ws = wants_upgrade and headers.get("upgrade", "").lower() == "websocket"
        entry = self.state.log(
            {
                "kind": "ws-upgrade" if is_ws else "http",
                "method": method,
                "path": path,
                "query": query,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers.raw_items()],
                "account": None,
                "status": None,
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest() if body else None,
                "session_id": headers.get("session-id") or headers.get("session_id"),
                "prompt_cache_key": None,
            }
        )

        async def answer(status: int, obj, extra_headers=()) -> bool:
            entry["status"] = status
            if obj is None:  # e.g. 202 to an MCP notification: no body
                await self._send_empty(conn, writer, status, extra_headers)
                return True
            payload = await self._send_json(conn, writer, status, obj, extra_headers)
            entry["response_sha256"] = hashlib.sha256(payload).hexdigest()
            return True

        if self.config.down:
            extra = []
            if self.config.down_retry_after is not None:
                extra.append(("retry-after", str(self.config.down_retry_after)))
            return await answer(
                503,
                _error_body("The server is temporarily unavailable (simulated).", "server_error", "service_unavailable"),
                extra,
            )

        if path == "/oauth/token":
            if method != "POST":
                return await answer(405, _error_body("Method not allowed", "invalid_request_error", None))
            return await self._oauth_token(body, headers, entry, answer)

        if path == RESPONSES_PATH and method == "GET" and is_ws:
            return await self._ws_upgrade(conn, reader, writer, req, headers, entry, answer)

        if not path.startswith("/backend-api/"):
            return await answer(404, {"detail": "Not Found"})

        known = {
            (RESPONSES_PATH, "POST"),
            (RESPONSES_PATH + "/compact", "POST"),
            ("/backend-api/codex/models", "GET"),
            ("/backend-api/wham/usage", "GET"),
            ("/backend-api/wham/accounts/check", "GET"),
        }
        side = side_mod.is_side(path, method)
        if side and not side_mod.needs_auth(path):  # ps/mcp: Codex sends no token off chatgpt.com
            entry["side"] = True
            try:
                raw = decode_body(body, headers.get("content-encoding"))
            except Exception:  # noqa: BLE001 - undecodable: the JSON-RPC parse error answers it
                raw = b"\x00"
            status, obj = side_mod.answer(path, method, query, raw)
            return await answer(status, obj)
        if (path, method) not in known and not side:
            if path == RESPONSES_PATH and method == "GET":
                return await answer(
                    426, _error_body("Upgrade to WebSocket required.", "invalid_request_error", "upgrade_required")
                )
            return await answer(404, {"detail": "Not Found"})

        now = time.time()
        acct, err = self.state.authenticate(headers.get("authorization"), headers.get("chatgpt-account-id"), now)
        owner = self.state.account_for_token(headers.get("authorization"))
        if err is not None:
            entry["account"] = None
            entry["auth_error"] = err[0]
            entry["token_owner"] = owner.name if owner else None
            code, message = err
            return await answer(401, _error_body(message, "invalid_request_error", code, 401))
        entry["account"] = acct.name
        acct.roll_windows(now)

        if path == "/backend-api/codex/models":
            cat = models_mod.catalogue()
            for entry_ in cat["models"]:
                entry_.update(self.config.models_patch or {})
            return await answer(200, cat, [("etag", 'W/"fake-chatgpt-models-1"')])
        if path == "/backend-api/wham/usage":
            return await answer(200, acct.wham_usage(now))
        if path == "/backend-api/wham/accounts/check":
            return await answer(200, self._accounts_check(acct))
        if side:
            entry["side"] = True
            status, obj = side_mod.answer(path, method, query, body)
            return await answer(status, obj)

        # model endpoints: parse the body
        try:
            decoded = decode_body(body, headers.get("content-encoding"))
            payload = json.loads(decoded) if decoded else {}
            if not isinstance(payload, dict):
                raise ValueError("body is not a JSON object")
        except Exception as exc:  # noqa: BLE001 - any decoding problem is the client's
            return await answer(400, _error_body(f"Could not parse request body: {exc}", "invalid_request_error", None))
        entry["decoded_body_len"] = len(decoded)
        if self.config.log_bodies:
            entry["body"] = payload
        entry["prompt_cache_key"] = payload.get("prompt_cache_key")
        entry["model"] = payload.get("model")

        if path.endswith("/compact"):
            return await answer(200, R.compact_output(payload, acct.name), acct.rate_limit_headers(now))

        violation = self._check_rules(payload, "http", headers)
        if violation is not None:
            entry["rule"] = violation.rule
            return await answer(violation.status, violation.http_body())

        outcome = self._prepare_turn(acct, payload, len(decoded), "http", prior_context=0, now=now)
        return await self._answer_http_turn(conn, writer, entry, outcome)

    def _check_rules(self, body: dict, transport: str, headers: dict) -> rules_mod.Violation | None:
        """The backend rule the body breaks (rules.py), unless the `lenient` switch is on."""
        if self.config.lenient:
            return None
        return rules_mod.check(body, transport=transport, headers=headers, known_models=models_mod.slugs())

    def _accounts_check(self, acct: Account) -> dict:
        origin = self.config.workspace_backend_origin or self.url
        return {
            "accounts": [
                {
                    "id": acct.account_id,
                    "name": None,
                    "structure": "personal",
                    "plan_type": acct.plan,
                    "profile_picture_url": None,
                    "is_deactivated": False,
                    "can_access_with_session": True,
                    "sso_connection_name": None,
                    "is_fedramp_compliant_workspace": False,
                    "workspace_backend_origin": origin,
                    "account_routing_override": "NO_CONSTRAINT",
                }
            ],
            "account_ordering": [acct.account_id],
        }

    # ------------------------------------------------------------------ model turns

    def _fault_error(self, fault: Fault, acct: Account, now: float) -> tuple[int, dict, list]:
        """HTTP status, JSON body and headers of an error-answer fault."""
        p = fault.params
        headers: list = []
        if p.get("retry_after") is not None:
            headers.append(("retry-after", str(p["retry_after"])))
        if fault.kind == "usage_limit":
            secs = int(p.get("resets_in_seconds", max(1, acct.primary.reset_at - now)))
            body = {
                "error": {
                    "type": "usage_limit_reached",
                    "message": p.get("message", "The usage limit has been reached"),
                    "plan_type": p.get("plan_type", acct.plan),
                    "resets_at": int(now) + secs,
                    "eligible_promo": None,
                    "resets_in_seconds": secs,
                }
            }
            return int(p.get("status", 429)), body, acct.rate_limit_headers(now) + headers
        if fault.kind == "usage_not_included":
            body = {
                "error": {
                    "type": "usage_not_included",
                    "message": p.get(
                        "message",
                        "To use Codex with your ChatGPT plan, upgrade to Plus: https://chatgpt.com/explore/plus.",
                    ),
                    "plan_type": p.get("plan_type", acct.plan),
                }
            }
            return int(p.get("status", 429)), body, acct.rate_limit_headers(now) + headers
        if fault.kind == "unauthorized":
            code = p.get("code", "token_invalidated")
            msg = p.get("message", "Your authentication token has been invalidated. Please try signing in again.")
            return 401, _error_body(msg, p.get("type", "invalid_request_error"), code, 401), headers
        # "status" and "ws_error" (status in params)
        status = int(p.get("status", 503))
        err = p.get("error")
        if isinstance(err, dict):
            body = {"error": err}
        else:
            body = _error_body(
                p.get("message", f"Simulated error {status}."),
                p.get("type", _default_error_type(status)),
                p.get("code"),
            )
        return status, body, headers

    def _prepare_turn(
        self,
        acct: Account,
        body: dict,
        body_len: int,
        transport: str,
        *,
        prior_context: int,
        now: float,
        on_done: Callable[[dict, str], None] | None = None,
    ) -> Outcome:
        cfg = self.config
        generate = body.get("generate", True) is not False
        acct.model_requests += 1
        acct.roll_windows(now)
        fault = self.state.take_fault(acct.name, transport, prewarm=not generate)
        delay, hang = cfg.stream_delay, 0.0
        cut_after = None
        huge = None
        model = body.get("model") or models_mod.DEFAULT_MODEL
        resp_id = R.new_id("resp")
        if fault is not None:
            acct.faults_applied += 1
            k = fault.kind
            if k in ("usage_limit", "usage_not_included", "status", "unauthorized", "ws_error"):
                status, ebody, eh = self._fault_error(fault, acct, now)
                return Outcome("error", status=status, body=ebody, headers=eh, fault=k)
            if k == "drop":
                return Outcome("drop", fault=k)
            if k == "hang":
                hang = float(fault.params.get("seconds", 3600.0))
            if k == "huge_event":
                huge = (str(fault.params.get("shape", "event")), int(fault.params.get("bytes", 12 << 20)))
            if k == "slow":
                delay = max(delay, float(fault.params.get("seconds", fault.params.get("delay", 1.0))))
            elif k == "cut":
                cut_after = int(fault.params.get("after", fault.params.get("events", 2)))
            elif k == "failed":
                events = R.failed_events(
                    resp_id=resp_id,
                    model=model,
                    code=fault.params.get("code", "server_error"),
                    message=fault.params.get(
                        "message",
                        "An error occurred while processing your request. Please try again in 1s.",
                    ),
                )
                return Outcome(
                    "stream",
                    headers=acct.rate_limit_headers(now),
                    events=events,
                    delay=delay,
                    fault=k,
                    response_id=resp_id,
                )

        if cfg.enforce_limits:
            window = acct.limit_reached()
            if window is not None:
                secs = max(1, int(window.reset_at - now))
                ebody = {
                    "error": {
                        "type": "usage_limit_reached",
                        "message": "The usage limit has been reached",
                        "plan_type": acct.plan,
                        "resets_at": window.reset_at,
                        "eligible_promo": None,
                        "resets_in_seconds": secs,
                    }
                }
                return Outcome("error", status=429, body=ebody, headers=acct.rate_limit_headers(now), fault=None)

        plan = R.plan_turn(body, acct.name) if generate else None
        input_tokens = prior_context + max(1, R.ceil_div(body_len, 4))
        key = body.get("prompt_cache_key")
        cached = 0
        if isinstance(key, str) and key in acct.cache:
            cached = min(acct.cache[key], input_tokens)
        reasoning = cfg.reasoning_tokens if generate else 0
        usage = R.make_usage(input_tokens, cached, R.output_tokens_of(plan), reasoning)
        if generate:
            acct.primary.used_percent = round(acct.primary.used_percent + cfg.primary_step, 4)
            if acct.secondary is not None:
                acct.secondary.used_percent = round(acct.secondary.used_percent + cfg.secondary_step, 4)
        events = R.turn_events(
            resp_id=resp_id,
            model=model,
            plan=plan,
            usage=usage,
            rate_limits_event=acct.rate_limits_event(now),
            deltas=cfg.deltas,
            account_name=acct.name,
        )

        def complete() -> None:
            acct.add_usage(usage)
            if generate:
                acct.turns += 1
            else:
                acct.prewarms += 1
            if cached:
                acct.cache_hits += 1
            if isinstance(key, str):
                acct.cache[key] = input_tokens
            if on_done is not None:
                on_done(usage, resp_id)

        headers = acct.rate_limit_headers(now)
        if cfg.turn_state:
            headers.append(("x-codex-turn-state", f"ts_{acct.account_id}_{resp_id[-8:]}"))
        return Outcome(
            "stream",
            headers=headers,
            events=events,
            delay=delay,
            cut_after=cut_after,
            hang=hang,
            fault=fault.kind if fault else None,
            response_id=resp_id,
            on_complete=complete,
            huge=huge,
            usage=usage,
        )

    async def _answer_http_turn(self, conn, writer, entry: dict, outcome: Outcome) -> bool:
        entry["fault"] = outcome.fault
        if outcome.hang:  # accepted, then silence: not even the headers
            await asyncio.sleep(outcome.hang)
        if outcome.kind == "drop":
            entry["status"] = None
            entry["dropped"] = True
            raise _Drop()
        if outcome.kind == "error":
            entry["status"] = outcome.status
            payload = await self._send_json(conn, writer, outcome.status, outcome.body, outcome.headers)
            entry["response_sha256"] = hashlib.sha256(payload).hexdigest()
            return True
        entry["status"] = 200
        entry["response_id"] = outcome.response_id
        hdrs = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("server", SERVER_HEADER),
            ("x-oai-request-id", R.new_id("req")),
            *outcome.headers,
        ]
        await self._send(conn, writer, h11.Response(status_code=200, headers=hdrs, reason=b"OK"))
        if outcome.huge is not None:
            return await self._answer_huge_event(conn, writer, entry, outcome)
        events = outcome.events
        limit = len(events)
        if outcome.cut_after is not None:
            limit = min(max(0, outcome.cut_after), len(events) - 1)
        digest = hashlib.sha256()
        for i, event in enumerate(events[:limit]):
            if i and outcome.delay:
                await asyncio.sleep(outcome.delay)
            chunk = R.sse_encode(event)
            if self.config.event_timestamps:  # benchmark knob: when this event left, for per-event delay
                chunk = b": t=%d\n" % time.monotonic_ns() + chunk
            await self._send(conn, writer, h11.Data(data=chunk))
            digest.update(chunk)
            entry["response_sha256"] = digest.hexdigest()
            if event["type"] == "response.completed" and outcome.on_complete:
                outcome.on_complete()
                entry["completed"] = True
                entry["usage"] = outcome.usage
        if limit < len(events):
            entry["cut_after"] = limit
            if outcome.delay:
                await asyncio.sleep(outcome.delay)
            raise _Drop()
        await self._send(conn, writer, h11.EndOfMessage())
        return True

    async def _answer_huge_event(self, conn, writer, entry: dict, outcome: Outcome) -> bool:
        """The `huge_event` fault, after the headers. Shape `event`: the turn as usual, but its
        `response.completed` event padded (`"padding": "xxx…"`) to `bytes` bytes, one SSE event.
        Shape `line`: `response.created` and `.in_progress`, then a `data: xxx…` line of `bytes`
        bytes that never ends (no line end), then the end of the body."""
        shape, size = outcome.huge or ("event", 0)
        digest = hashlib.sha256()

        async def send(chunk: bytes) -> None:
            await self._send(conn, writer, h11.Data(data=chunk))
            digest.update(chunk)
            entry["response_sha256"] = digest.hexdigest()

        if shape == "line":
            for event in outcome.events[:2]:
                await send(R.sse_encode(event))
            left = max(0, size)
            await send(b"data: ")
            while left > 0:
                piece = min(left, 1 << 16)
                await send(b"x" * piece)
                left -= piece
            entry["huge_line"] = size
        else:
            for event in outcome.events:
                chunk = R.sse_encode(event)
                if event["type"] == "response.completed":
                    pad = max(0, size - len(chunk) - len(',"padding":""'))
                    chunk = R.sse_encode({**event, "padding": "x" * pad})
                    entry["huge_event"] = len(chunk)
                await send(chunk)
                if event["type"] == "response.completed" and outcome.on_complete:
                    outcome.on_complete()
                    entry["completed"] = True
                    entry["usage"] = outcome.usage
        await self._send(conn, writer, h11.EndOfMessage())
        return True

    # ------------------------------------------------------------------ /oauth/token

    async def _oauth_token(self, body: bytes, headers: dict, entry: dict, answer) -> bool:
        ctype = headers.get("content-type", "")
        try:
            raw = decode_body(body, headers.get("content-encoding"))
            if "application/x-www-form-urlencoded" in ctype:
                params = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            else:
                params = json.loads(raw or b"{}")
            if not isinstance(params, dict):
                raise ValueError("not an object")
        except Exception:  # noqa: BLE001
            return await answer(400, {"error": {"code": "invalid_request", "message": "Could not parse body."}})
        entry["grant_type"] = params.get("grant_type")
        entry["client_id"] = params.get("client_id")
        entry["refresh_reason"] = params.get("refresh_reason")
        if params.get("grant_type") != "refresh_token":
            return await answer(
                400, {"error": {"code": "unsupported_grant_type", "message": "Only refresh_token is simulated."}}
            )
        owner = self.state.refresh_tokens.get(params.get("refresh_token") or "")
        slow = self.state.take_fault(owner, "refresh-delay") if owner else None
        if slow is not None:  # a slow token endpoint: the grant is looked at only after the wait
            await asyncio.sleep(float(slow.params.get("seconds", 1.0)))
        status, obj, acct = self.state.refresh(params.get("refresh_token"), time.time())
        entry["account"] = acct.name if acct else None
        if status != 200:
            code = obj.get("error", {}).get("code") if isinstance(obj.get("error"), dict) else obj.get("error")
            entry["refresh_error"] = code or obj.get("code")
        return await answer(status, obj)

    # ------------------------------------------------------------------ WebSocket

    async def _ws_upgrade(self, conn, reader, writer, req, headers, entry, answer) -> bool:
        now = time.time()
        acct, err = self.state.authenticate(headers.get("authorization"), headers.get("chatgpt-account-id"), now)
        if err is not None:
            entry["auth_error"] = err[0]
            return await answer(401, _error_body(err[1], "invalid_request_error", err[0], 401))
        entry["account"] = acct.name
        if not self.config.websocket:
            return await answer(
                426,
                _error_body(
                    "WebSocket connections are not enabled (simulated).", "invalid_request_error", "upgrade_required"
                ),
            )
        key = headers.get("sec-websocket-key")
        if not key or headers.get("sec-websocket-version") != "13":
            return await answer(400, _error_body("Bad WebSocket handshake.", "invalid_request_error", None))
        fault = self.state.take_fault(acct.name, "ws-upgrade")
        if fault is not None:
            acct.faults_applied += 1
            entry["fault"] = fault.kind
            if fault.kind == "drop":
                raise _Drop()
            status, ebody, eh = self._fault_error(fault, acct, now)
            entry["status"] = status
            payload = await self._send_json(conn, writer, status, ebody, eh)
            entry["response_sha256"] = hashlib.sha256(payload).hexdigest()
            return True

        extensions = []
        resp_headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", generate_accept_token(key.encode())),
            ("server", SERVER_HEADER),
            ("x-oai-request-id", R.new_id("req")),
        ]
        offers = [
            o for v in [headers.get("sec-websocket-extensions", "")] if v for o in split_comma_header(v.encode())
        ]
        if self.config.permessage_deflate and offers:
            pmd = PerMessageDeflate()
            accepted = server_extensions_handshake(offers, [pmd])
            if accepted:
                resp_headers.append(("sec-websocket-extensions", accepted.decode()))
                extensions.append(pmd)
        acct.roll_windows(now)
        resp_headers += acct.rate_limit_headers(now)
        if self.config.turn_state:
            resp_headers.append(("x-codex-turn-state", f"ts_{acct.account_id}_{R.new_id('ws')[-8:]}"))
        entry["status"] = 101
        await self._send(conn, writer, h11.InformationalResponse(status_code=101, headers=resp_headers, reason=b"Switching Protocols"))
        trailing, _closed = conn.trailing_data
        ws = WSConnection(ConnectionType.SERVER, extensions=extensions, trailing_data=trailing)
        session = {
            "account": acct,
            "upgrade_seq": entry["seq"],
            "session_id": entry.get("session_id"),
            "path": entry["path"],
            "last_response_id": None,
            "context_tokens": 0,
            "headers": headers,  # of the upgrade: the rules' Codex recognition (originator)
        }
        await self._ws_loop(ws, reader, writer, session)
        return False

    async def _ws_loop(self, ws: WSConnection, reader, writer, session: dict) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        def send(event) -> None:
            data = ws.send(event)
            if data:
                writer.write(data)

        async def pump() -> None:
            text_parts: list[str] = []
            try:
                # events already buffered from the trailing data
                while True:
                    for event in ws.events():
                        if isinstance(event, TextMessage):
                            text_parts.append(event.data)
                            if event.message_finished:
                                await queue.put("".join(text_parts))
                                text_parts.clear()
                        elif isinstance(event, BytesMessage):
                            await queue.put(b"")
                        elif isinstance(event, Ping):
                            send(event.response())
                        elif isinstance(event, CloseConnection):
                            with contextlib.suppress(Exception):
                                send(event.response())
                            await queue.put(None)
                            return
                    data = await reader.read(65536)
                    if not data:
                        await queue.put(None)
                        return
                    ws.receive_data(data)
            except Exception:  # noqa: BLE001
                await queue.put(None)

        pump_task = asyncio.create_task(pump())
        try:
            while True:
                msg = await queue.get()
                if msg is None:
                    break
                await self._ws_message(ws, writer, send, session, msg)
        finally:
            pump_task.cancel()
            with contextlib.suppress(BaseException):
                await pump_task
            self.state.log(
                {
                    "kind": "ws-close",
                    "method": None,
                    "path": session["path"],
                    "query": "",
                    "headers": [],
                    "account": session["account"].name,
                    "status": None,
                    "upgrade_seq": session["upgrade_seq"],
                    "session_id": session["session_id"],
                    "prompt_cache_key": None,
                }
            )

    async def _ws_message(self, ws, writer, send, session: dict, msg) -> None:
        acct: Account = session["account"]
        entry = self.state.log(
            {
                "kind": "ws-msg",
                "method": "WS",
                "path": session["path"],
                "query": "",
                "headers": [],
                "account": acct.name,
                "status": None,
                "upgrade_seq": session["upgrade_seq"],
                "session_id": session["session_id"],
                "prompt_cache_key": None,
                "body_len": len(msg.encode()) if isinstance(msg, str) else 0,
                "body_sha256": hashlib.sha256(msg.encode()).hexdigest() if isinstance(msg, str) else None,
            }
        )
        if not isinstance(msg, str):
            entry["msg_type"] = "binary"
            return
        try:
            body = json.loads(msg)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            entry["msg_type"] = "invalid"
            return
        entry["msg_type"] = body.get("type")
        if self.config.log_bodies:
            entry["body"] = body
        entry["prompt_cache_key"] = body.get("prompt_cache_key")
        entry["previous_response_id"] = body.get("previous_response_id")
        entry["model"] = body.get("model")
        if "generate" in body:
            entry["generate"] = body.get("generate")
        if body.get("type") != "response.create":
            return

        async def send_frame(obj: dict) -> None:
            send(TextMessage(data=json.dumps(obj, separators=(",", ":"))))
            await writer.drain()

        if self.config.down:
            entry["status"] = 503
            await send_frame(
                {
                    "type": "error",
                    "status": 503,
                    "error": {
                        "type": "server_error",
                        "code": "service_unavailable",
                        "message": "The server is temporarily unavailable (simulated).",
                    },
                }
            )
            return

        violation = self._check_rules(body, "ws", session.get("headers") or {})
        if violation is not None:
            entry["status"] = violation.status
            entry["rule"] = violation.rule
            await send_frame(violation.ws_frame())
            return

        now = time.time()
        prev = body.get("previous_response_id")
        if prev is not None and prev != session["last_response_id"]:
            entry["status"] = 400
            await send_frame(
                {
                    "type": "error",
                    "status": 400,
                    "error": {
                        "type": "invalid_request_error",
                        "code": "previous_response_not_found",
                        "message": f"Previous response with id '{prev}' not found.",
                        "param": "previous_response_id",
                    },
                }
            )
            return
        prior = session["context_tokens"] if prev is not None else 0

        def on_done(usage: dict, resp_id: str) -> None:
            session["last_response_id"] = resp_id
            session["context_tokens"] = usage["input_tokens"] + usage["output_tokens"]

        outcome = self._prepare_turn(acct, body, len(msg.encode()), "ws", prior_context=prior, now=now, on_done=on_done)
        entry["fault"] = outcome.fault
        if outcome.kind == "drop":
            entry["dropped"] = True
            writer.transport.abort()
            raise _Drop()
        if outcome.kind == "error":
            entry["status"] = outcome.status
            frame = {"type": "error", "status": outcome.status, **outcome.body}
            frame["error"] = outcome.body.get("error", outcome.body)
            frame.pop("status_code", None)
            if outcome.headers:
                frame["headers"] = {k: v for k, v in outcome.headers}
            await send_frame(frame)
            return
        entry["status"] = 200
        entry["response_id"] = outcome.response_id
        events = outcome.events
        limit = len(events)
        if outcome.cut_after is not None:
            limit = min(max(0, outcome.cut_after), len(events) - 1)
        for i, event in enumerate(events[:limit]):
            if i and outcome.delay:
                await asyncio.sleep(outcome.delay)
            await send_frame(event)
            if event["type"] == "response.completed" and outcome.on_complete:
                outcome.on_complete()
                entry["completed"] = True
                entry["usage"] = outcome.usage
        if limit < len(events):
            entry["cut_after"] = limit
            if outcome.delay:
                await asyncio.sleep(outcome.delay)
            writer.transport.abort()
            raise _Drop()

    # ------------------------------------------------------------------ control API

    async def _control(self, conn, writer, method: str, path: str, query: str, body: bytes) -> bool:
        try:
            status, obj = self._control_route(method, path, query, body)
        except ControlError as exc:
            status, obj = exc.status, {"error": str(exc)}
        await self._send_json(conn, writer, status, obj)
        return True

    def _control_route(self, method: str, path: str, query: str, body: bytes):
        st = self.state
        q = {k: v[-1] for k, v in parse_qs(query).items()}

        def payload():
            if not body:
                return {}
            try:
                return json.loads(body)
            except ValueError:
                raise ControlError("body is not valid JSON") from None

        parts = [p for p in path.split("/") if p][1:]  # drop "_fake"
        if parts == ["health"]:
            return 200, {"ok": True, "url": self.url}
        if parts == ["state"] and method == "GET":
            return 200, st.snapshot()
        if parts == ["accounts"]:
            if method == "GET":
                now = time.time()
                return 200, {"accounts": [a.public(now) for a in st.accounts.values()]}
            if method == "POST":
                data = payload()
                if not isinstance(data, dict):
                    raise ControlError("body must be a JSON object")
                name = data.pop("name", None)
                return 201, st.add_account(name, **data)
        if len(parts) >= 2 and parts[0] == "accounts":
            name = parts[1]
            acct = st.account(name)
            rest = parts[2:]
            if not rest:
                if method == "GET":
                    acct.roll_windows(time.time())
                    return 200, acct.public(time.time())
                if method in ("POST", "PATCH"):
                    data = payload()
                    if not isinstance(data, dict):
                        raise ControlError("body must be a JSON object")
                    return 200, st.update_account(name, data)
            if rest == ["login"] and method == "POST":
                data = payload() or {}
                auth = st.issue_tokens(name, access_ttl=data.get("access_ttl_seconds"))
                if data.get("write"):
                    return 200, {**auth, "path": self.write_pool_file(name, auth)}
                return 200, auth
            if rest == ["auth"] and method == "GET":
                return 200, acct.current_auth
            if rest == ["revoke"] and method == "POST":
                data = payload() or {}
                st.revoke(name, refresh_only=bool(data.get("refresh_only")))
                return 200, {"ok": True}
            if rest == ["limit"] and method == "POST":
                data = payload() or {}
                return 200, st.limit(name, data.get("seconds"), data.get("window", "primary"))
            if rest == ["expire"] and method == "POST":
                return 200, {"expired": st.expire_access(name, time.time())}
            if rest == ["wham-usage"] and method == "GET":
                acct.roll_windows(time.time())
                return 200, acct.wham_usage(time.time())
        if parts == ["requests"]:
            if method == "GET":
                items = list(st.request_log)
                if "since" in q:
                    since = int(q["since"])
                    items = [e for e in items if e["seq"] > since]
                if "kind" in q:
                    items = [e for e in items if e["kind"] == q["kind"]]
                if "path" in q:
                    items = [e for e in items if e["path"] == q["path"]]
                if "account" in q:
                    items = [e for e in items if e["account"] == q["account"]]
                return 200, {"requests": items}
            if method == "DELETE":
                n = len(st.request_log)
                st.request_log.clear()
                return 200, {"cleared": n}
        if parts == ["faults"]:
            if method == "GET":
                return 200, {"faults": st.list_faults()}
            if method == "POST":
                data = payload()
                specs = data.get("faults") if isinstance(data, dict) and "faults" in data else data
                if isinstance(specs, dict):
                    specs = [specs]
                if not isinstance(specs, list):
                    raise ControlError("body must be a fault object, a list, or {\"faults\": [...]}")
                added = [st.add_fault(s).as_dict() for s in specs]
                return 201, {"added": added, "faults": st.list_faults()}
            if method == "DELETE":
                if "account" in q:
                    key = None if q["account"] in ("", "*global*") else q["account"]
                    return 200, {"cleared": st.clear_faults(key, everything=False)}
                return 200, {"cleared": st.clear_faults()}
        if parts == ["tokens"] and method == "GET":
            return 200, st.issued_tokens()
        if parts == ["schedule"]:
            if method == "GET":
                return 200, self.schedule.view()
            if method == "POST":
                data = payload()
                specs = data.get("actions") if isinstance(data, dict) and "actions" in data else data
                if isinstance(specs, dict):
                    specs = [specs]
                if not isinstance(specs, list):
                    raise ControlError("body must be an action object, a list, or {\"actions\": [...]}")
                added = self.add_schedule(specs)
                return 201, {"added": added, **self.schedule.view()}
            if method == "DELETE":
                return 200, {"cleared": self.schedule.clear()}
        if parts == ["config"]:
            if method == "GET":
                return 200, st.config.as_dict()
            if method == "POST":
                data = payload()
                if not isinstance(data, dict):
                    raise ControlError("body must be a JSON object")
                st.config.update(data)
                return 200, st.config.as_dict()
        raise ControlError(f"no control endpoint {method} {path}", 404)
