"""KeyBook: the keys in force, per-key usage from ledger records, the rebuild at start-up."""

from codex_pool.core.client_keys import ClientKey, KeyFile, key_digest, usage_from_records
from codex_pool.core.key_book import KeyBook

SALT = b"s" * 32
T = 1_800_000_000.0


def book(**limits):
    b = KeyBook()
    b.load(KeyFile(SALT, [ClientKey(name="ana", digest=key_digest(SALT, "cp-" + "a" * 43), created=T, limits=limits)]))
    b.prices = {"m": {"input": 1_000_000, "output": 1_000_000}}  # $1 a token: easy sums
    return b


def rec(ts, inp, out, key="ana", duration_ms=1000, model="m"):
    return {"ts": ts, "key": key, "input_tokens": inp, "output_tokens": out, "duration_ms": duration_ms, "model": model}


def test_records_count_at_their_end_by_key_and_cost():
    b = book()
    b.record(rec(T, 10, 5))
    b.record(rec(T, 1, 1, key=None))  # no key: counted nowhere
    usage = b.usage_of("ana")
    assert usage.used("tokens_per_day", T + 2) == 15 and usage.used("usd_per_day", T + 2) == 15


def test_identify_and_describe_never_show_the_key():
    b = book(tokens_per_day=10)
    assert b.identify("cp-" + "a" * 43, T).key.name == "ana"
    assert b.identify("cp-" + "b" * 43, T).refusal == "unknown"
    rows = b.describe(T)
    assert rows[0]["name"] == "ana" and "a" * 43 not in str(rows) and key_digest(SALT, "cp-" + "a" * 43) not in str(rows)
    assert KeyBook().identify("anything", T).refusal is None  # keys off: nobody is asked


def test_a_rebuild_adopts_the_ledger_and_replays_what_was_counted_meanwhile():
    b = book(tokens_per_day=100)
    b.start_rebuild()
    b.record(rec(T + 10, 20, 0))  # live, while the ledger is being read
    b.admit("ana", T + 10)

    rebuilt = usage_from_records([rec(T - 100, 50, 0)], ["ana"], T)
    b.adopt(rebuilt)
    usage = b.usage_of("ana")
    assert usage.used("tokens_per_day", T + 20) == 70 and usage.used("requests_per_minute", T + 20) == 1
    b.record(rec(T + 30, 1, 0))  # after the rebuild: counted once
    assert b.usage_of("ana").used("tokens_per_day", T + 40) == 71


def test_an_abandoned_rebuild_keeps_what_was_counted_live():
    b = book()
    b.start_rebuild()
    b.record(rec(T, 5, 0))
    b.abandon_rebuild()
    assert b.usage_of("ana").used("tokens_per_day", T + 5) == 5
