"""The addon pipeline of addons/pool.py in-process (mitmproxy's own test harness, no network):
hooks translate flows to the core correctly, log at the right level, and never raise."""

import asyncio
import inspect
import json
import logging
import runpy
from pathlib import Path

import pytest
from mitmproxy import http, websocket
from mitmproxy.test import taddons, tflow, tutils

from codex_pool.core.sse import SSETap
from codex_pool.mitm.websockets import WS_KEEP_MESSAGES
from tests.support.tokens import make_auth, write_auth

ENTRY = Path(__file__).resolve().parents[2] / "addons" / "pool.py"


class Pipeline:
    """The real wiring of addons/pool.py, with each hook called on every addon in list order."""

    def __init__(self, tctx):
        ns = runpy.run_path(str(ENTRY))
        self.pool, self.lifecycle, self.addons = ns["pool"], ns["lifecycle"], ns["addons"]
        self.tctx = tctx
        tctx.master.options.update(listen_host="127.0.0.1")  # codex-pool refuses to start on all interfaces
        tctx.master.addons.add(*self.addons)

    def configure(self, **options):
        self.tctx.master.options.update(**options)

    async def hook(self, name, flow):
        """As mitmproxy does: each addon's hook in order, awaited when async, then wait while held."""
        for addon in self.addons:
            fn = getattr(addon, name, None)
            if fn is not None:
                result = fn(flow)
                if asyncio.iscoroutine(result):
                    await result
        await asyncio.wait_for(flow.wait_for_resume(), 5)


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\npolicy: round_robin\n")
    return tmp_path


@pytest.fixture
def pipeline(pool):
    with taddons.context() as tctx:
        p = Pipeline(tctx)
        p.configure(pool_config=str(pool / "mitm.yaml"))
        yield p


def turn_flow(headers=None, body=b'{"prompt_cache_key":"k1","input":[]}', path="/backend-api/codex/responses"):
    """A turn as Codex sends it (its originator: passed byte-for-byte, not normalised)."""
    f = tflow.tflow()
    f.request = tutils.treq(method=b"POST", path=path.encode(), content=body, headers=http.Headers(
        [(b"authorization", b"Bearer client-token"), (b"chatgpt-account-id", b"client-acct"), (b"cookie", b"c=1"),
         (b"originator", b"codex_exec")]
        + [(k.encode(), v.encode()) for k, v in (headers or {}).items()]))
    f.response = None
    return f


async def test_bad_file_warns_once_at_warning_level(pool, caplog):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    write_auth(pool / "pool", "bad", "{oops")
    with taddons.context() as tctx, caplog.at_level(logging.INFO, logger="codex_pool"):
        p = Pipeline(tctx)
        p.configure(pool_config=str(pool / "mitm.yaml"))
        p.lifecycle.running()
        await p.lifecycle.rescan()
        p.lifecycle.done()
    warnings = [r for r in caplog.records if "bad.json" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "not valid JSON" in warnings[0].getMessage() and "codex login" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_request_gets_pool_credentials_and_an_exchange(pool, pipeline):
    doc = make_auth("acct-good")
    write_auth(pool / "pool", "good", doc)
    await pipeline.lifecycle.rescan()
    f = turn_flow({"ChatGPT_Account_Id": "client-underscore"})
    await pipeline.hook("requestheaders", f)
    await pipeline.hook("request", f)
    assert f.response is None
    h = f.request.headers
    assert h.get_all("authorization") == [f"Bearer {doc['tokens']['access_token']}"]
    assert h.get_all("chatgpt-account-id") == ["acct-good"]
    assert "cookie" not in h and "chatgpt_account_id" not in h
    exchange = pipeline.pool.exchanges[f.id]
    assert exchange.account == "good" and exchange.conversation and exchange.attempt == 1 and exchange.chain is None
    assert pipeline.pool.registry.runtime["good"].in_flight == 1
    assert "good" in f.comment


async def test_routing_failure_answers_503_locally(pool, pipeline, monkeypatch, caplog):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    await pipeline.lifecycle.rescan()
    monkeypatch.setattr(pipeline.pool.router, "route", lambda *a, **k: (_ for _ in ()).throw(KeyError("boom")))
    f = turn_flow()
    await pipeline.hook("request", f)
    assert f.response.status_code == 503
    assert json.loads(f.response.content)["error"]["code"] == "proxy_internal_error"
    assert f.request.headers["authorization"] == "Bearer client-token"  # untouched, and never sent: answered locally
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert f.id not in pipeline.pool.exchanges


async def test_a_stream_is_tapped_redacted_recorded_and_closed(pool, pipeline):
    doc = make_auth("acct-good")
    write_auth(pool / "pool", "good", doc)
    await pipeline.lifecycle.rescan()
    records = []
    pipeline.pool.ledger = type("Sink", (), {"record": lambda self, r: records.append(r)})()
    f = turn_flow()
    await pipeline.hook("request", f)
    f.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream", **{"x-codex-primary-used-percent": "12"}))
    await pipeline.hook("responseheaders", f)
    assert isinstance(f.response.stream, SSETap)
    assert doc["tokens"]["access_token"] not in str(f.request.headers)
    f.response.stream(b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
                      b'{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}\n\n')
    f.response.stream(b"")
    await pipeline.hook("response", f)
    saved = f.metadata["codex_pool"]
    assert saved["turn"]["usage"]["total_tokens"] == 5 and saved["in_flight"] is False and saved["judged"] is True
    json.dumps(saved)  # JSON-friendly: flows can be saved
    assert f.id not in pipeline.pool.exchanges
    assert pipeline.pool.registry.runtime["good"].in_flight == 0
    assert pipeline.pool.registry.runtime["good"].rate_limits.primary.used_percent == 12
    assert [(r["account"], r["outcome"], r["total_tokens"]) for r in records] == [("good", "ok", 5)]


@pytest.mark.parametrize("hook", ["responseheaders", "response", "error", "websocket_message", "websocket_end"])
async def test_hooks_ignore_flows_they_never_routed_without_raising(pipeline, hook, caplog):
    plain = tflow.tflow(resp=True)
    await pipeline.hook(hook, plain)
    broken = tflow.tflow(resp=True, err=True)
    await pipeline.hook(hook, broken)
    ws = tflow.twebsocketflow()
    await pipeline.hook(hook, ws)
    assert plain.response.status_code == 200 and not plain.comment and "codex_pool" not in plain.metadata
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_pool_config_changed_while_running_rescans_off_the_loop(pool, pipeline, tmp_path):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    other = tmp_path / "other"
    (other / "pool").mkdir(parents=True)
    write_auth(other / "pool", "second", make_auth("acct-second"))
    (other / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    await pipeline.lifecycle.rescan()
    pipeline.lifecycle.running()
    try:
        assert list(pipeline.pool.registry.accounts) == ["good"]
        pipeline.configure(pool_config=str(other / "mitm.yaml"))
        for _ in range(200):  # the rescan runs as a task of the lifecycle
            if list(pipeline.pool.registry.accounts) == ["second"]:
                break
            await asyncio.sleep(0.01)
        assert list(pipeline.pool.registry.accounts) == ["second"]
        (other / "bad.yaml").write_text("policy: nope\n")
        with pytest.raises(Exception, match="policy"):
            pipeline.configure(pool_config=str(other / "bad.yaml"))
        assert list(pipeline.pool.registry.accounts) == ["second"]  # a rejected change keeps what was served
    finally:
        pipeline.lifecycle.done()


async def test_requestheaders_drops_client_credentials_and_buffers_the_body(pipeline):
    f = turn_flow()
    f.request.stream = True  # as mitmproxy's stream_large_bodies would set it
    await pipeline.hook("requestheaders", f)
    assert f.request.stream is False
    assert "authorization" not in f.request.headers and "cookie" not in f.request.headers
    admin = turn_flow(path="/admin/accounts")
    await pipeline.hook("requestheaders", admin)
    assert admin.request.headers["authorization"] == "Bearer client-token"  # admin_token checks need it
    with pytest.raises(Exception, match="stream_large_bodies"):
        pipeline.configure(stream_large_bodies="1")


async def test_long_websocket_flows_keep_a_bounded_message_list(pool, pipeline):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    await pipeline.lifecycle.rescan()
    ws = tflow.twebsocketflow()
    ws.request.path = "/backend-api/codex/responses"
    ws.websocket.messages.clear()
    upgrade, ws.response = ws.response, None  # routed as the upgrade request, before its 101
    await pipeline.hook("request", ws)
    ws.response = upgrade
    assert ws.id in pipeline.pool.exchanges
    for i in range(3 * WS_KEEP_MESSAGES):
        ws.websocket.messages.append(websocket.WebSocketMessage(1, i % 2 == 0, b'{"type":"x"}'))
        await pipeline.hook("websocket_message", ws)
    assert len(ws.websocket.messages) <= 2 * WS_KEEP_MESSAGES
    await pipeline.hook("websocket_end", ws)
    assert ws.id not in pipeline.pool.exchanges and pipeline.pool.registry.runtime["good"].in_flight == 0


async def test_steering_commands_share_the_admin_path(pool, pipeline):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    write_auth(pool / "pool", "other", make_auth("acct-other"))
    await pipeline.lifecycle.rescan()
    commands = pipeline.tctx.master.commands
    assert "pinned=good" in commands.execute("codex_pool.pin good")
    assert pipeline.pool.router.pinned == "good"
    commands.execute("codex_pool.disable other")
    assert pipeline.pool.registry.health.peek("other").state == "disabled"
    assert "other: disabled" in commands.execute("codex_pool.accounts")
    commands.execute("codex_pool.enable other")
    commands.execute("codex_pool.unpin good")
    assert pipeline.pool.router.pinned is None and pipeline.pool.registry.health.peek("other").state == "usable"
    from mitmproxy import exceptions

    with pytest.raises(exceptions.CommandError, match="no pool account 'nobody'"):
        commands.execute("codex_pool.pin nobody")
    write_auth(pool / "pool", "third", make_auth("acct-third"))
    commands.execute("codex_pool.reload")  # a rescan in the background
    for _ in range(200):
        if "third" in pipeline.pool.registry.accounts:
            break
        await asyncio.sleep(0.01)
    assert "third" in pipeline.pool.registry.accounts


@pytest.mark.parametrize("by_client,code,outcome", [
    (True, 1000, "client_cancelled"), (True, 1006, "connection_error"), (False, 1011, "connection_error"),
])
async def test_a_socket_that_ends_mid_turn_records_who_ended_it(pool, pipeline, by_client, code, outcome):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    await pipeline.lifecycle.rescan()
    records = []
    pipeline.pool.ledger = type("Sink", (), {"record": lambda self, r: records.append(r)})()
    ws = tflow.twebsocketflow()
    ws.request.path = "/backend-api/codex/responses"
    ws.websocket.messages.clear()
    upgrade, ws.response = ws.response, None
    await pipeline.hook("request", ws)
    ws.response = upgrade
    ws.websocket.messages.append(websocket.WebSocketMessage(1, True, b'{"type":"response.create","model":"m"}'))
    await pipeline.hook("websocket_message", ws)
    ws.websocket.closed_by_client, ws.websocket.close_code = by_client, code  # 1006: no close frame (idle timeout)
    await pipeline.hook("websocket_end", ws)
    assert [(r["kind"], r["outcome"]) for r in records] == [("ws_turn", outcome)]


@pytest.mark.parametrize("host,password,refused", [
    ("127.0.0.1", "", False), ("0.0.0.0", "", True), ("0.0.0.0", "s3cret-pass", False), ("::1", "", False),
])
def test_mitmweb_beyond_loopback_needs_a_password(host, password, refused):
    from codex_pool.mitm.guard import web_exposure_problem

    problem = web_exposure_problem(host, password)
    assert (problem is not None) == refused
    if refused:
        assert "web_password" in problem


async def test_the_pipeline_calls_each_part_in_order_sync_when_it_can():
    from codex_pool.mitm.pipeline import Pipeline as FlowPipeline

    calls = []

    class A:
        def request(self, flow):
            calls.append("a.request")

        def response(self, flow):
            calls.append("a.response")

    class B:
        def request(self, flow):
            calls.append("b.request")

    class C:
        async def response(self, flow):
            calls.append("c.response")

    parts = [A(), B(), C()]
    pipeline = FlowPipeline(parts)
    assert not asyncio.iscoroutinefunction(pipeline.request) and asyncio.iscoroutinefunction(pipeline.response)
    assert not hasattr(pipeline, "error") and pipeline.__dict__.get("websocket_end") is None
    pipeline.request(None)
    await pipeline.response(None)
    assert calls == ["a.request", "b.request", "a.response", "c.response"]
    single = FlowPipeline([B()])
    assert single.request.__self__ is single.parts[0]  # one part: mitmproxy calls it directly


async def test_a_part_that_raises_or_defers_does_not_stop_or_reorder_the_others(caplog):
    from codex_pool.mitm.pipeline import Pipeline as FlowPipeline

    calls = []

    class Broken:
        def response(self, flow):
            calls.append("broken")
            raise KeyError("boom")

    class Slow:
        def response(self, flow):
            calls.append("slow")
            return self._later()

        async def _later(self):
            await asyncio.sleep(0)
            calls.append("slow done")

    class Last:
        def response(self, flow):
            calls.append("last")

    pipeline = FlowPipeline([Broken(), Slow(), Last()])
    pending = pipeline.response(None)  # sync up to the part that defers
    assert calls == ["broken", "slow"] and inspect.isawaitable(pending)
    await pending
    assert calls == ["broken", "slow", "slow done", "last"]
    assert any("Broken.response failed" in r.getMessage() and "boom" in r.getMessage() for r in caplog.records)
    calls.clear()
    assert FlowPipeline([Last(), Last()]).response(None) is None and calls == ["last", "last"]
