"""The header helpers of the request path: one pass over the raw fields, names in any case."""

from mitmproxy import http

from codex_pool.mitm.flows import answer_headers, drop_client_credentials, lower_headers
from codex_pool.mitm.routing import ROUTING_HEADERS


def headers(*pairs):
    return http.Headers([(k.encode(), v.encode()) for k, v in pairs])


def test_lower_headers_keeps_only_the_wanted_ones_first_of_repeated():
    h = headers(("Session-Id", "abc"), ("session-id", "second"), ("Upgrade", "websocket"),
                ("X-Codex-Turn-Metadata", '{"request_kind":"compaction"}'), ("User-Agent", "codex"))
    assert lower_headers(h, ROUTING_HEADERS) == {
        "session-id": "abc", "upgrade": "websocket", "x-codex-turn-metadata": '{"request_kind":"compaction"}'}


def test_answer_headers_reads_content_type_and_codex_headers_in_one_pass():
    h = headers(("Content-Type", "Text/Event-Stream; charset=utf-8"), ("X-Codex-Primary-Used-Percent", "12"),
                ("content-type", "application/json"), ("x-codex-plan-type", "pro"), ("Date", "x"))
    assert answer_headers(h) == ("text/event-stream; charset=utf-8",
                                 {"x-codex-primary-used-percent": "12", "x-codex-plan-type": "pro"})
    assert answer_headers(headers(("Date", "x"))) == ("", {})


def test_client_credentials_are_dropped_in_any_spelling_and_the_pool_ones_added():
    h = headers(("AUTHORIZATION", "Bearer client"), ("chatgpt_account_id", "c"), ("Cookie", "s=1"),
                (" proxy-authorization", "Basic x"), ("Accept", "*/*"), ("cookie2", "kept"))
    drop_client_credentials(h, add=((b"Authorization", b"Bearer pool"),))
    assert h.fields == ((b"Accept", b"*/*"), (b"cookie2", b"kept"), (b"Authorization", b"Bearer pool"))
