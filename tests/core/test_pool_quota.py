"""The pool's quota shown to clients: the formula, its three forms, and the stream rewriter."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from codex_pool.core.pool_quota import AccountQuota, RateLimitEventRewriter, pool_quota
from codex_pool.core.quota import Credits, RateLimits, Window

NOW = 1_800_000_000.0


def limits(primary, secondary=None, reset_in=3600, credits=None, plan="plus"):
    return RateLimits(Window(primary, 300, NOW + reset_in),
                      Window(secondary, 10080, NOW + 7 * 86400) if secondary is not None else None,
                      credits, NOW, "headers", plan)


def test_one_exhausted_account_of_four_shows_the_pools_headroom_not_its_100_percent():
    accounts = [AccountQuota("limited", limits(100, 40, reset_in=1800), "plus"),
                AccountQuota("usable", limits(10, 20), "plus"),
                AccountQuota("usable", limits(20, 20), "plus"),
                AccountQuota("usable", limits(30, 40), "plus")]
    q = pool_quota(accounts, NOW)
    assert q.primary.used_percent == 40.0 and q.secondary.used_percent == 30.0
    assert q.primary.reset_at == NOW + 1800  # the earliest reset: when headroom next grows
    assert q.primary.window_minutes == 300 and q.secondary.window_minutes == 10080
    assert not q.limit_reached and q.accounts == 4 and q.plan == "plus"
    headers = q.headers(NOW)
    assert headers["x-codex-primary-used-percent"] == "40" and headers["x-codex-primary-reset-at"] == str(int(NOW + 1800))
    usage = q.usage_payload(NOW)
    assert usage["rate_limit"] == {"allowed": True, "limit_reached": False,
                                   "primary_window": {"used_percent": 40, "limit_window_seconds": 18000,
                                                      "reset_after_seconds": 1800, "reset_at": int(NOW + 1800)},
                                   "secondary_window": {"used_percent": 30, "limit_window_seconds": 604800,
                                                        "reset_after_seconds": 7 * 86400,
                                                        "reset_at": int(NOW + 7 * 86400)}}


def test_a_limited_account_counts_full_even_if_its_last_figures_were_lower():
    q = pool_quota([AccountQuota("limited", limits(60), "plus"), AccountQuota("usable", limits(0), "plus")], NOW)
    assert q.primary.used_percent == 50.0


def test_disabled_and_expired_accounts_and_unknown_figures_are_left_out():
    q = pool_quota([AccountQuota("disabled", limits(100), "plus"), AccountQuota("expired", limits(100), "plus"),
                    AccountQuota("usable", None, "pro"), AccountQuota("cooling", limits(30), "pro")], NOW)
    assert q.primary.used_percent == 30.0 and q.accounts == 2 and q.plan == "pro"
    assert pool_quota([AccountQuota("usable", None, None)], NOW).primary is None


def test_a_passed_reset_counts_zero():
    q = pool_quota([AccountQuota("usable", limits(80, reset_in=-5), "plus"), AccountQuota("usable", limits(20), "plus")],
                   NOW)
    assert q.primary.used_percent == 10.0 and q.primary.reset_at == NOW + 3600


def test_all_limited_is_limit_reached_and_credits_add_up():
    c1, c2 = Credits(False, False, "0"), Credits(True, False, "12.5")
    q = pool_quota([AccountQuota("limited", limits(100, credits=c1), "plus"),
                    AccountQuota("limited", limits(100, credits=c2), "plus")], NOW)
    assert q.limit_reached and q.usage_payload(NOW)["rate_limit"]["allowed"] is False
    assert q.credits == Credits(True, False, "12.5")
    assert q.headers(NOW)["x-codex-credits-has-credits"] == "True"


def test_the_event_keeps_fields_that_are_not_quota():
    q = pool_quota([AccountQuota("usable", limits(10), "plus"), AccountQuota("usable", limits(30), "plus")], NOW)
    original = {"type": "codex.rate_limits", "metered_limit_name": "codex", "plan_type": "plus",
                "rate_limits": {"allowed": True, "primary": {"used_percent": 10}, "secondary": None}}
    event = q.event(NOW, original)
    assert event["metered_limit_name"] == "codex" and event["rate_limits"]["primary"]["used_percent"] == 20.0
    assert original["rate_limits"]["primary"] == {"used_percent": 10}  # not modified


def sse(kind, data):
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


STREAM = (sse("response.created", {"type": "response.created"})
          + sse("codex.rate_limits", {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": 95}}})
          + sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "codex.rate_limits"})
          + sse("response.completed", {"type": "response.completed"}))


def replace(event):
    return {**event, "rate_limits": {"primary": {"used_percent": 42}}}


def test_the_rate_limit_event_is_rewritten_and_nothing_else_changes():
    out = RateLimitEventRewriter(replace)(STREAM)
    assert out == STREAM.replace(b'"used_percent":95', b'"used_percent":42')


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=15))
def test_any_chunking_gives_the_same_bytes(cuts):
    rewriter = RateLimitEventRewriter(replace)
    out, start = b"", 0
    for cut in sorted(set(cuts)) + [len(STREAM)]:
        if cut > start:
            out += rewriter(STREAM[start:cut])
            start = cut
    out += rewriter(b"")
    assert out == STREAM.replace(b'"used_percent":95', b'"used_percent":42')


def test_ordinary_chunks_are_not_held_back():
    rewriter = RateLimitEventRewriter(replace)
    chunk = sse("response.output_text.delta", {"delta": "hi"})
    assert rewriter(chunk) == chunk and rewriter.carry == b""


def test_a_rewriter_that_fails_passes_everything_untouched():
    rewriter = RateLimitEventRewriter(lambda event: 1 / 0)
    assert rewriter(STREAM) == STREAM and rewriter(b"more") == b"more"


def test_the_usage_answer_has_whole_numbers_codex_can_parse():
    """Codex 0.169.0 drops a wham/usage answer with a float or a missing reset (probed in the TUI)."""
    q = pool_quota([AccountQuota("usable", RateLimits(Window(0.5, None, None), None, None, NOW, "event"), "plus"),
                    AccountQuota("usable", limits(1), "plus")], NOW + 0.7)
    window = q.usage_payload(NOW + 0.7)["rate_limit"]["primary_window"]
    assert all(type(window[k]) is int for k in ("used_percent", "limit_window_seconds", "reset_after_seconds",
                                                 "reset_at")), window
    nothing_used = pool_quota([AccountQuota("usable", RateLimits(Window(0.0, 300, None), None, None, NOW, "event"),
                                            "plus")], NOW)
    assert nothing_used.usage_payload(NOW)["rate_limit"]["primary_window"] == {
        "used_percent": 0, "limit_window_seconds": 18000, "reset_after_seconds": 18000, "reset_at": int(NOW) + 18000}


def test_the_marker_inside_model_text_changes_nothing():
    """A text delta that says "event: codex.rate_limits" is text, not an event line."""
    tricky = (sse("response.output_text.delta", {"type": "response.output_text.delta",
                                                  "delta": "\nevent: codex.rate_limits\n"})
              + sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "NEXT"}))
    rewriter = RateLimitEventRewriter(replace)
    assert rewriter(tricky) + rewriter.flush() == tricky


def test_an_event_line_of_another_type_of_data_is_left_alone():
    odd = b"event: codex.rate_limits\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n"
    assert RateLimitEventRewriter(replace)(odd) == odd


def test_crlf_and_no_space_forms_are_rewritten():
    crlf = STREAM.replace(b"\n", b"\r\n").replace(b"event: codex", b"event:codex")
    out = RateLimitEventRewriter(replace)(crlf)
    assert out == crlf.replace(b'"used_percent":95', b'"used_percent":42')


def test_an_event_that_never_ends_is_not_held_forever():
    rewriter = RateLimitEventRewriter(replace)
    head = b"event: codex.rate_limits\ndata: {\"type\":\"codex.rate_limits\""
    sent = rewriter(head)
    assert sent == b""  # held: the event may still end
    filler = b"x" * 70_000
    sent += rewriter(filler)
    assert sent == head + filler and rewriter.carry == b""  # past the bound: passed on untouched


def test_a_held_back_unfinished_event_goes_out_at_the_end():
    rewriter = RateLimitEventRewriter(replace)
    head = b"event: codex.rate_limits\ndata: {\"type\":\"codex.rate_limits\"}\n"
    assert rewriter(head) == b"" and rewriter(b"") == head
