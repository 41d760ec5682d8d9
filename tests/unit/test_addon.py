"""The addon class in-process (mitmproxy's own test harness, no network): hooks translate flows
to the core correctly, log at the right level, and never raise."""

import asyncio
import json
import logging

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from codex_pool.mitm.addon import CodexPool
from codex_pool.core.sse import SSETap
from tests.support.tokens import make_auth, write_auth


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\npolicy: round_robin\n")
    return tmp_path


def turn_flow(headers=None, body=b'{"prompt_cache_key":"k1","input":[]}', path="/backend-api/codex/responses"):
    f = tflow.tflow()
    f.request = tutils.treq(method=b"POST", path=path.encode(), content=body, headers=http.Headers(
        [(b"authorization", b"Bearer client-token"), (b"chatgpt-account-id", b"client-acct"), (b"cookie", b"c=1")]
        + [(k.encode(), v.encode()) for k, v in (headers or {}).items()]))
    f.response = None
    return f


async def configured(tctx, addon, pool):
    tctx.configure(addon, pool_config=str(pool / "mitm.yaml"))


async def test_bad_file_warns_once_at_warning_level(pool, caplog):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    write_auth(pool / "pool", "bad", "{oops")
    addon = CodexPool()
    with taddons.context(addon) as tctx, caplog.at_level(logging.INFO, logger="codex_pool"):
        await configured(tctx, addon, pool)
        addon.running()
        await addon.rescan()
        addon.done()
    warnings = [r for r in caplog.records if "bad.json" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "not valid JSON" in warnings[0].getMessage() and "codex login" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_request_gets_pool_credentials_and_metadata(pool):
    doc = make_auth("acct-good")
    write_auth(pool / "pool", "good", doc)
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        f = turn_flow({"ChatGPT_Account_Id": "client-underscore"})
        await addon.request(f)
    assert f.response is None
    h = f.request.headers
    assert h.get_all("authorization") == [f"Bearer {doc['tokens']['access_token']}"]
    assert h.get_all("chatgpt-account-id") == ["acct-good"]
    assert "cookie" not in h and "chatgpt_account_id" not in h
    assert f.metadata["codex_pool"]["account"] == "good" and f.metadata["codex_pool"]["conversation"]
    assert "good" in f.comment


async def test_routing_failure_answers_503_locally(pool, monkeypatch, caplog):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        monkeypatch.setattr(addon.router, "route", lambda *a: (_ for _ in ()).throw(KeyError("boom")))
        f = turn_flow()
        await addon.request(f)
    assert f.response.status_code == 503
    assert json.loads(f.response.content)["error"]["code"] == "proxy_internal_error"
    assert f.request.headers["authorization"] == "Bearer client-token"  # untouched, and never sent: answered locally
    assert any("internal error" in r.getMessage() for r in caplog.records)


async def test_responseheaders_attaches_a_tap_and_redacts(pool):
    doc = make_auth("acct-good")
    write_auth(pool / "pool", "good", doc)
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        f = turn_flow()
        await addon.request(f)
        f.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream", **{"x-codex-primary-used-percent": "12"}))
        addon.responseheaders(f)
        assert isinstance(f.response.stream, SSETap)
        assert doc["tokens"]["access_token"] not in str(f.request.headers)
        f.response.stream(b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
                          b'{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}\n\n')
        f.response.stream(b"")
        await addon.response(f)
    meta = f.metadata["codex_pool"]
    assert meta["turn"]["usage"]["total_tokens"] == 5 and meta["in_flight"] is False
    assert addon.registry.runtime["good"].in_flight == 0
    assert addon.registry.runtime["good"].rate_limits.primary.used_percent == 12


@pytest.mark.parametrize("hook", ["responseheaders", "response", "error", "websocket_message", "websocket_end"])
async def test_hooks_ignore_foreign_or_broken_flows_without_raising(pool, hook):
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        plain = tflow.tflow(resp=True)
        async def call(flow):
            result = getattr(addon, hook)(flow)
            if asyncio.iscoroutine(result):
                await result

        await call(plain)  # a flow the addon never routed
        broken = tflow.tflow(resp=True, err=True)
        broken.metadata["codex_pool"] = {"account": None, "in_flight": "odd"}  # inconsistent on purpose
        await call(broken)
        ws = tflow.twebsocketflow()
        ws.metadata["codex_pool"] = {"account": "gone", "in_flight": True}
        await call(ws)


async def test_pool_config_changed_while_running_rescans_off_the_loop(pool, tmp_path):
    write_auth(pool / "pool", "good", make_auth("acct-good"))
    other = tmp_path / "other"
    (other / "pool").mkdir(parents=True)
    write_auth(other / "pool", "second", make_auth("acct-second"))
    (other / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        addon.running()
        assert list(addon.registry.accounts) == ["good"]
        tctx.configure(addon, pool_config=str(other / "mitm.yaml"))
        await addon._pending_rescan
        assert list(addon.registry.accounts) == ["second"]
        with pytest.raises(Exception, match="policy"):
            (other / "bad.yaml").write_text("policy: nope\n")
            tctx.configure(addon, pool_config=str(other / "bad.yaml"))
        assert list(addon.registry.accounts) == ["second"]  # a rejected change keeps what was served
        addon.done()


async def test_requestheaders_drops_client_credentials_and_buffers_the_body(pool):
    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        f = turn_flow()
        f.request.stream = True  # as mitmproxy's stream_large_bodies would set it
        addon.requestheaders(f)
        assert f.request.stream is False
        assert "authorization" not in f.request.headers and "cookie" not in f.request.headers
        admin = turn_flow(path="/admin/accounts")
        addon.requestheaders(admin)
        assert admin.request.headers["authorization"] == "Bearer client-token"  # admin_token checks need it
        with pytest.raises(Exception, match="stream_large_bodies"):
            tctx.configure(addon, stream_large_bodies="1")


async def test_long_websocket_flows_keep_a_bounded_message_list(pool):
    from mitmproxy import websocket

    from codex_pool.mitm.flowtools import WS_KEEP_MESSAGES

    addon = CodexPool()
    with taddons.context(addon) as tctx:
        await configured(tctx, addon, pool)
        ws = tflow.twebsocketflow()
        ws.metadata["codex_pool"] = {"account": "good", "in_flight": True}
        for i in range(3 * WS_KEEP_MESSAGES):
            ws.websocket.messages.append(websocket.WebSocketMessage(1, i % 2 == 0, b'{"type":"x"}'))
            await addon.websocket_message(ws)
        assert len(ws.websocket.messages) <= 2 * WS_KEEP_MESSAGES
