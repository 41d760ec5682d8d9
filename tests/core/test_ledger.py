import json

import pytest

from codex_pool.core.ledger import build_record, model_from_body, request_kind


@pytest.mark.parametrize(
    "method,path,headers,kind",
    [
        ("POST", "/backend-api/codex/responses", {}, "sse_turn"),
        ("POST", "/backend-api/codex/responses?codex-pool-retry=x.2", {}, "sse_turn"),
        ("GET", "/backend-api/codex/responses", {"upgrade": "websocket"}, "ws_turn"),
        ("POST", "/backend-api/codex/responses/compact", {}, "compaction"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": json.dumps({"request_kind": "compaction"})}, "compaction"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": '{"request_kind":"turn"}'}, "sse_turn"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": '{"compaction" broken'}, "sse_turn"),
        ("GET", "/backend-api/codex/models?client_version=0.169.0", {}, "models"),
        ("GET", "/backend-api/wham/usage", {}, "usage"),
        ("GET", "/backend-api/wham/accounts/check", {}, "other"),
    ],
)
def test_request_kind(method, path, headers, kind):
    assert request_kind(method, path, headers) == kind


def test_model_from_body():
    assert model_from_body(b'{"model":"gpt-5.1-codex","input":[]}') == "gpt-5.1-codex"
    assert model_from_body(b'{"input":"x"}') is None and model_from_body(None) is None


def test_build_record_is_flat_and_safe():
    r = build_record(ts=1.23456, account="alice", kind="sse_turn", path="/backend-api/codex/responses?a=1", status=200,
                     outcome="ok", usage={"input_tokens": 10, "total_tokens": 12, "output_tokens": True},
                     model="m", ttfb_ms=3.0, duration_ms=10.04, attempt=1, conversation="0123456789abcdef")
    assert r["ts"] == 1.235 and r["path"] == "/backend-api/codex/responses"
    assert (r["input_tokens"], r["output_tokens"], r["cached_input_tokens"], r["total_tokens"]) == (10, 0, 0, 12)
    assert r["duration_ms"] == 10.0 and all(not isinstance(v, (dict, list)) for v in r.values())
