"""core/client_keys.py: key hashes and identification, the keys file parser, rolling-window usage
and limits (table-driven)."""

import copy
import random

import pytest
from codex_pool.core import client_keys
from codex_pool.core.client_keys import (
    EXPIRED,
    LIMITS,
    LONGEST_WINDOW,
    MISSING,
    REVOKED,
    UNKNOWN,
    ClientKey,
    KeyFile,
    KeysError,
    KeyUsage,
    bearer,
    check_limits,
    identify,
    key_digest,
    keys_doc,
    looks_like_key,
    parse_keys,
    usage_from_records,
)
from hypothesis import given, settings
from hypothesis import strategies as st

SALT = bytes(range(32))
NOW = 1_800_000_017.25  # deliberately not on a minute boundary
KEY_A = "cp-" + "a" * 43
KEY_B = "cp-" + "b" * 43
KEY_C = "cp-" + "c" * 43


def ck(name="alice", key=KEY_A, **kw):
    return ClientKey(name=name, digest=key_digest(SALT, key), created=NOW - 86400, **kw)


# ---- hashes and identification --------------------------------------------------------------------

def test_digest_is_keyed_hex_and_depends_on_key_and_salt():
    d = key_digest(SALT, KEY_A)
    assert len(d) == 64 and int(d, 16) >= 0 and d == key_digest(SALT, KEY_A)
    assert d != key_digest(SALT, KEY_B)
    assert d != key_digest(bytes(32), KEY_A)
    assert KEY_A not in d


KEYS = [ck("alice", KEY_A), ck("bob", KEY_B, revoked=NOW - 5), ck("carol", KEY_C, expires=NOW)]


@pytest.mark.parametrize("presented,name,refusal", [
    (None, None, MISSING),
    ("", None, MISSING),
    ("cp-" + "z" * 43, None, UNKNOWN),
    (KEY_A + " ", None, UNKNOWN),  # no trimming, no prefix matching
    (KEY_A[:-1], None, UNKNOWN),
    (KEY_B, "bob", REVOKED),
    (KEY_C, "carol", EXPIRED),  # expires == now: expired
    (KEY_A, "alice", None),
])
def test_identify(presented, name, refusal):
    got = identify(KEYS, presented, SALT, NOW)
    assert (got.key.name if got.key else None, got.refusal) == (name, refusal)


def test_expiry_is_exclusive_and_revocation_wins_over_expiry():
    assert identify([ck(expires=NOW + 0.001)], KEY_A, SALT, NOW).refusal is None
    assert identify([ck(expires=NOW - 1, revoked=NOW - 2)], KEY_A, SALT, NOW).refusal == REVOKED
    assert identify([ck()], KEY_A, b"another salt....................", NOW).refusal == UNKNOWN


@pytest.mark.parametrize("position", [0, 2, 4, None])
def test_identify_compares_every_stored_hash_whatever_matches(monkeypatch, position):
    keys = [ck(f"k{i}", f"cp-{i}" + "x" * 43) for i in range(5)]
    presented = f"cp-{position}" + "x" * 43 if position is not None else "cp-none" + "x" * 43
    calls = []
    real = client_keys.hmac.compare_digest
    monkeypatch.setattr(client_keys.hmac, "compare_digest", lambda a, b: calls.append(a) or real(a, b))
    got = identify(keys, presented, SALT, NOW)
    assert len(calls) == len(keys) and calls == [k.digest for k in keys]
    assert got.key == (keys[position] if position is not None else None)


@pytest.mark.parametrize("header,token", [
    ("Bearer cp-abc", "cp-abc"),
    ("bearer   cp-abc  ", "cp-abc"),
    ("BEARER cp-abc", "cp-abc"),
    ("Basic cp-abc", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("cp-abc", None),
    ("", None),
    (None, None),
])
def test_bearer(header, token):
    assert bearer(header) == token


@pytest.mark.parametrize("text,ok", [
    ("cp-" + "a" * 40, True), ("cp-" + "a" * 39, False), ("xx-" + "a" * 43, False), ("", False)])
def test_looks_like_key(text, ok):
    assert looks_like_key(text) is ok


# ---- the keys file --------------------------------------------------------------------------------

def good_doc():
    return {"salt": SALT.hex(), "keys": [
        {"name": "alice", "hash": key_digest(SALT, KEY_A), "created": 1_700_000_000,
         "expires": 1_900_000_000.5, "models": ["gpt-a", "gpt-b"],
         "limits": {"tokens_per_day": 1000, "usd_per_month": 2.5, "tokens_per_week": None}},
        {"name": "bob.ci_2", "hash": key_digest(SALT, KEY_B), "created": 1_700_000_000, "revoked": 1_700_000_100},
    ]}


def test_a_good_file_parses_and_round_trips():
    kf = parse_keys(good_doc())
    assert kf.salt == SALT and [k.name for k in kf.keys] == ["alice", "bob.ci_2"]
    alice, bob = kf.keys
    assert alice.models == ("gpt-a", "gpt-b") and alice.limits == {"tokens_per_day": 1000.0, "usd_per_month": 2.5}
    assert alice.expires == 1_900_000_000.5 and bob.revoked == 1_700_000_100 and bob.models is None and bob.limits == {}
    doc = keys_doc(kf.salt, kf.keys)
    assert doc["keys"][0]["limits"] == {"tokens_per_day": 1000, "usd_per_month": 2.5}
    assert isinstance(doc["keys"][0]["created"], int) and isinstance(doc["keys"][0]["limits"]["tokens_per_day"], int)
    assert parse_keys(doc) == kf


def edited(change):
    doc = copy.deepcopy(good_doc())
    change(doc)
    return doc


def _set(path, value):
    def change(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return change


def _del(path):
    def change(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
    return change


BAD_EDITS = [
    ("not an object", lambda d: d.clear(), '{"salt"'),
    ("keys not a list", _set(["keys"], {"alice": {}}), '{"salt"'),
    ("unknown top-level field", _set(["version"], 2), "unknown field version"),
    ("no salt", _del(["salt"]), "salt must be"),
    ("salt too short", _set(["salt"], "ab" * 15), "salt must be"),
    ("salt not hex", _set(["salt"], "zz" * 32), "salt must be"),
    ("salt upper-case", _set(["salt"], SALT.hex().upper()), "salt must be"),
    ("salt odd length", _set(["salt"], SALT.hex() + "a"), "salt must be"),
    ("entry not an object", _set(["keys", 0], "alice"), "keys[0]: expected an object"),
    ("name missing", _del(["keys", 0, "name"]), "keys[0]: name must be"),
    ("name with a space", _set(["keys", 0, "name"], "al ice"), "name must be"),
    ("name too long", _set(["keys", 0, "name"], "a" * 65), "name must be"),
    ("duplicate name", _set(["keys", 1, "name"], "alice"), "'alice': the name is used twice"),
    ("hash missing", _del(["keys", 0, "hash"]), "hash must be 64 hex"),
    ("hash short", _set(["keys", 0, "hash"], "ab" * 31), "hash must be 64 hex"),
    ("the key itself instead of a hash", _set(["keys", 0, "hash"], KEY_A), "hash must be 64 hex"),
    ("duplicate hash", _set(["keys", 1, "hash"], key_digest(SALT, KEY_A)), "'bob.ci_2': the same key is stored twice"),
    ("unknown field", _set(["keys", 0, "limit"], {}), "'alice': unknown field limit"),
    ("created missing", _del(["keys", 0, "created"]), "created is required"),
    ("created a string", _set(["keys", 0, "created"], "2026-01-01"), "created must be unix seconds"),
    ("created a bool", _set(["keys", 0, "created"], True), "created must be unix seconds"),
    ("expires negative", _set(["keys", 0, "expires"], -1), "expires must be unix seconds"),
    ("revoked infinite", _set(["keys", 1, "revoked"], float("inf")), "revoked must be unix seconds"),
    ("models a string", _set(["keys", 0, "models"], "gpt-a"), "models must be a list"),
    ("models with an empty name", _set(["keys", 0, "models"], ["gpt-a", ""]), "models must be a list"),
    ("limits a list", _set(["keys", 0, "limits"], []), "limits must be an object"),
    ("limits a number", _set(["keys", 0, "limits"], 5), "limits must be an object"),
    ("unknown limit", _set(["keys", 0, "limits"], {"tokens_per_month": 5}), "unknown limit 'tokens_per_month'"),
    ("limit zero", _set(["keys", 0, "limits"], {"tokens_per_day": 0}), "tokens_per_day must be a positive number"),
    ("limit negative", _set(["keys", 0, "limits"], {"usd_per_day": -1}), "usd_per_day must be a positive number"),
    ("limit a string", _set(["keys", 0, "limits"], {"tokens_per_day": "1000"}), "must be a positive number"),
    ("limit a bool", _set(["keys", 0, "limits"], {"requests_per_minute": True}), "must be a positive number"),
    ("limit NaN", _set(["keys", 0, "limits"], {"requests_per_minute": float("nan")}), "must be a positive number"),
]


@pytest.mark.parametrize("what,change,message", BAD_EDITS, ids=[b[0] for b in BAD_EDITS])
def test_bad_edits_are_refused_naming_the_problem(what, change, message):
    doc = edited(change)
    with pytest.raises(KeysError) as e:
        parse_keys(doc)
    assert message in str(e.value)
    assert KEY_A not in str(e.value) or what == "the key itself instead of a hash"


def test_an_empty_file_is_valid():
    assert parse_keys({"salt": SALT.hex(), "keys": []}) == KeyFile(SALT, [])


# ---- usage and limits -----------------------------------------------------------------------------

def use(usage: KeyUsage, limit: str, amount: float, at: float) -> None:
    """`amount` of what `limit` counts, at time `at`."""
    what = LIMITS[limit][1]
    if what == "requests":
        for _ in range(int(amount)):
            usage.admit(at)
    elif what == "tokens":
        usage.record(at, int(amount), 0.0)
    else:
        usage.record(at, 0, amount)


BOUNDS = {"requests_per_minute": 5, "tokens_per_5h": 1000, "tokens_per_day": 5000, "tokens_per_week": 20000,
          "usd_per_day": 2.5, "usd_per_month": 40.0}


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("where,refused", [("below", False), ("at", True), ("above", True)])
def test_each_limit_below_at_and_above_its_bound(limit, where, refused):
    bound = BOUNDS[limit]
    amount = {"below": bound - 1, "at": bound, "above": bound + 1}[where]
    usage = KeyUsage()
    use(usage, limit, amount, NOW - 10)
    key = ck(limits={limit: float(bound)})
    got = check_limits(key, usage, "gpt-a", NOW)
    assert (got is not None) is refused
    if refused:
        assert got.limit == limit and got.used == amount and got.bound == bound
        assert got.resets_at == NOW - 10 + LIMITS[limit][0]
        assert "'alice'" in got.message and f"{bound:g}" in got.message
    # another limit type with the same usage does not refuse
    other = next(n for n in LIMITS if LIMITS[n][1] != LIMITS[limit][1])
    assert check_limits(ck(limits={other: 1e9}), usage, "gpt-a", NOW) is None


@pytest.mark.parametrize("limit", LIMITS)
def test_usage_leaves_the_window_exactly_window_seconds_after_it_was_counted(limit):
    window = LIMITS[limit][0]
    usage = KeyUsage()
    at = NOW - 1234.5
    use(usage, limit, BOUNDS[limit], at)
    key = ck(limits={limit: float(BOUNDS[limit])})
    assert usage.used(limit, at + window - 0.001) == BOUNDS[limit]
    assert check_limits(key, usage, None, at + window - 0.001).resets_at == at + window
    assert usage.used(limit, at + window) == 0
    assert check_limits(key, usage, None, at + window) is None


def test_rolling_tokens_free_up_as_the_oldest_usage_leaves():
    usage = KeyUsage()
    usage.record(NOW - 3600, 600, 0)      # leaves at NOW - 3600 + 5h
    usage.record(NOW - 1800, 300, 0)      # leaves at NOW - 1800 + 5h
    usage.record(NOW - 60.5, 200, 0)      # leaves at NOW - 60.5 + 5h
    w = LIMITS["tokens_per_5h"][0]
    # 1100 used; under 1000 once the first leaves; under 300 once the second leaves too; under 100 at the last
    # exactly at a bound after one leaves (500 left, bound 500) is still refused: the next must leave too
    for bound, resets in [(1000, NOW - 3600 + w), (500, NOW - 1800 + w), (300, NOW - 1800 + w), (150, NOW - 60.5 + w),
                          (1100, NOW - 3600 + w), (1101, None)]:
        got = check_limits(ck(limits={"tokens_per_5h": bound}), usage, None, NOW)
        assert (got.resets_at if got else None) == resets
        if resets is not None:
            assert check_limits(ck(limits={"tokens_per_5h": bound}), usage, None, resets) is None
            assert check_limits(ck(limits={"tokens_per_5h": bound}), usage, None, resets - 0.01) is not None


def test_requests_resets_at_is_when_enough_admissions_have_left():
    usage = KeyUsage()
    times = [NOW - 50, NOW - 40, NOW - 30, NOW - 20, NOW - 10]
    for t in times:
        usage.admit(t)
    for bound, resets in [(5, NOW - 50 + 60), (3, NOW - 30 + 60), (1, NOW - 10 + 60), (2.5, NOW - 30 + 60), (6, None)]:
        got = check_limits(ck(limits={"requests_per_minute": bound}), usage, None, NOW)
        assert (got.resets_at if got else None) == resets, bound


def test_a_bucket_leaves_with_its_latest_record_never_earlier():
    usage = KeyUsage()
    start = NOW - NOW % 60
    usage.record(start + 1, 500, 0)
    usage.record(start + 50, 500, 0)  # same minute
    w = LIMITS["tokens_per_5h"][0]
    assert usage.used("tokens_per_5h", start + 50 + w - 0.001) == 1000
    assert usage.used("tokens_per_5h", start + 50 + w) == 0


def test_two_limits_reached_refusal_names_the_one_that_frees_up_last():
    usage = KeyUsage()
    for _ in range(3):
        usage.admit(NOW - 5)
    usage.record(NOW - 600, 5000, 0)
    key = ck(limits={"requests_per_minute": 3, "tokens_per_day": 5000})
    got = check_limits(key, usage, None, NOW)
    assert got.limit == "tokens_per_day" and got.resets_at == NOW - 600 + 86400
    only_rpm = check_limits(ck(limits={"requests_per_minute": 3, "tokens_per_day": 6000}), usage, None, NOW)
    assert only_rpm.limit == "requests_per_minute" and only_rpm.resets_at == NOW - 5 + 60


@pytest.mark.parametrize("seed", range(5))
def test_out_of_order_records_and_admissions_count_as_in_order(seed):
    rng = random.Random(seed)
    events = [(NOW - rng.uniform(0, LONGEST_WINDOW + 3600), rng.randint(1, 500), rng.random()) for _ in range(300)]
    admissions = [NOW - rng.uniform(0, 90) for _ in range(30)]
    ordered, shuffled = KeyUsage(), KeyUsage()
    for t, tokens, usd in sorted(events):
        ordered.record(t, tokens, usd)
    for t in sorted(admissions):
        ordered.admit(t)
    rng.shuffle(events)
    rng.shuffle(admissions)
    for t, tokens, usd in events:
        shuffled.record(t, tokens, usd)
    for t in admissions:
        shuffled.admit(t)
    assert list(shuffled.admitted) == sorted(shuffled.admitted)
    for limit in LIMITS:
        assert shuffled.used(limit, NOW) == pytest.approx(ordered.used(limit, NOW))
        bound = max(1.0, ordered.used(limit, NOW) * 0.7)
        assert shuffled.resets_at(limit, bound, NOW) == ordered.resets_at(limit, bound, NOW)
    # what a brute force over the raw events says
    in_day = sum(tok for t, tok, _ in events if t > NOW - 86400)
    assert ordered.used("tokens_per_day", NOW) >= in_day  # a bucket may keep early records of its minute
    assert ordered.used("tokens_per_day", NOW) <= sum(tok for t, tok, _ in events if t > NOW - 86400 - 60)
    assert ordered.used("requests_per_minute", NOW) == sum(1 for t in admissions if t > NOW - 60)


def brute_used(events, limit, now):
    """What KeyUsage should say, from the raw events: a minute's bucket is inside while its
    latest record is."""
    window, what = LIMITS[limit]
    last = {}
    for t, _, _ in events:
        m = t - t % 60
        last[m] = max(last.get(m, t), t)
    col = 1 if what == "tokens" else 2
    return sum(e[col] for e in events if last[e[0] - e[0] % 60] > now - window)


@pytest.mark.parametrize("seed", range(3))
def test_live_use_over_months_matches_a_brute_force_count(seed):
    """Turns finishing slightly out of order over 75 days, checked as time goes on (buckets that
    left the longest window are dropped along the way)."""
    rng = random.Random(seed)
    usage, seen, minutes = KeyUsage(), [], set()
    now = NOW - 75 * 86400
    while now < NOW:
        now += rng.expovariate(1 / 3000)
        for _ in range(rng.randint(0, 3)):
            t = now - rng.uniform(0, 300)  # finished up to 5 minutes ago, in any order
            event = (t, rng.randint(0, 5000), round(rng.uniform(0, 0.05), 6))
            usage.record(*event)
            seen.append(event)
            minutes.add(t - t % 60)
        seen = [e for e in seen if e[0] > now - LONGEST_WINDOW - 3600]  # older ones count nowhere
        if rng.random() < 0.3:
            limit = rng.choice([n for n in LIMITS if LIMITS[n][1] != "requests"])
            assert usage.used(limit, now) == pytest.approx(brute_used(seen, limit, now), abs=1e-6)
            bound = rng.uniform(1e-3, 1 + brute_used(seen, limit, now))
            resets = usage.resets_at(limit, bound, now)
            if resets > now:
                assert brute_used(seen, limit, resets) < bound <= brute_used(seen, limit, resets - 0.001)
            else:
                assert brute_used(seen, limit, now) < bound
    usage.used("usd_per_month", now)
    live = len({t - t % 60 for t, _, _ in seen if t > now - LONGEST_WINDOW})
    # what left the longest window is dropped (in batches): never more than as much again as is live
    assert len(usage._start) < len(minutes) and len(usage._start) <= max(2 * live, live + 257)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 90_000), st.integers(1, 1000)), min_size=1, max_size=30),
       st.integers(1, 5000), st.sampled_from(["tokens_per_5h", "tokens_per_day"]))
def test_resets_at_is_exactly_when_the_key_gets_through_again(records, bound, limit):
    usage = KeyUsage()
    for age, tokens in records:
        usage.record(NOW - age, tokens, 0.0)
    key = ck(limits={limit: bound})
    got = check_limits(key, usage, None, NOW)
    if got is None:
        assert usage.used(limit, NOW) < bound
        return
    assert got.resets_at > NOW
    assert check_limits(key, usage, None, got.resets_at) is None
    assert check_limits(key, usage, None, got.resets_at - 0.001) is not None


@pytest.mark.parametrize("models,model,allowed", [
    (None, "gpt-x", True),
    (("gpt-a", "gpt-b"), "gpt-b", True),
    (("gpt-a", "gpt-b"), "gpt-x", False),
    (("gpt-a",), "GPT-A", False),  # exact names
    (("gpt-a",), None, True),  # a request without a model (a models listing) is not a model use
    ((), "gpt-a", False),
])
def test_model_allow_list(models, model, allowed):
    got = check_limits(ck(models=models), KeyUsage(), model, NOW)
    assert (got is None) is allowed
    if not allowed:
        assert got.limit == "model" and repr(model) in got.message and got.resets_at is None


def test_the_model_check_comes_before_the_limits():
    usage = KeyUsage()
    usage.admit(NOW)
    got = check_limits(ck(models=("gpt-a",), limits={"requests_per_minute": 1}), usage, "gpt-x", NOW)
    assert got.limit == "model"


def test_snapshot_shows_every_window_with_remaining_and_resets():
    usage = KeyUsage()
    usage.admit(NOW - 1)
    usage.record(NOW - 100, 700, 0.25)
    snap = usage.snapshot({"tokens_per_day": 500.0, "usd_per_month": 1.0}, NOW)
    assert set(snap) == set(LIMITS)
    assert snap["requests_per_minute"] == {"used": 1.0, "limit": None, "remaining": None, "resets_at": None}
    assert snap["tokens_per_day"] == {"used": 700, "limit": 500.0, "remaining": 0.0, "resets_at": NOW - 100 + 86400}
    assert snap["usd_per_month"] == {"used": 0.25, "limit": 1.0, "remaining": 0.75, "resets_at": None}


# ---- rebuilding from the ledger (restart) ---------------------------------------------------------

PRICES = {"gpt-a": {"input": 2.0, "cached_input": 2.0, "output": 10.0}}


def ledger_record(key, ts, inp=0, out=0, model="gpt-a", duration_ms=1000.0):
    return {"ts": ts, "account": "pool-1", "key": key, "model": model, "kind": "sse_turn", "input_tokens": inp,
            "cached_input_tokens": 0, "output_tokens": out, "duration_ms": duration_ms}


def test_a_restart_rebuilds_what_was_counted_live():
    live = KeyUsage()
    records = []
    for i, (age, inp, out) in enumerate([(90_000, 100, 10), (5000, 200, 20), (600, 300, 30), (30, 400, 40), (5, 0, 0)]):
        start = NOW - age
        live.admit(start)
        if inp or out:
            live.record(start + 2.0, inp + out, (inp * 2.0 + out * 10.0) / 1e6)
        records.append(ledger_record("alice", start, inp, out, duration_ms=2000.0))
    records += [ledger_record(None, NOW - 10, 999, 999), ledger_record("mallory", NOW - 10, 999, 999),
                ledger_record(["x"], NOW - 10, 1, 1), {"ts": "yesterday", "key": "alice", "input_tokens": 5},
                ledger_record("alice", NOW - LONGEST_WINDOW - 10, 10_000, 0)]
    random.Random(1).shuffle(records)
    rebuilt = usage_from_records(records, ["alice", "bob"], NOW, PRICES)
    assert set(rebuilt) == {"alice", "bob"}
    limits = {n: 1.0 for n in LIMITS}
    assert rebuilt["alice"].snapshot(limits, NOW) == live.snapshot(limits, NOW)
    assert rebuilt["alice"].used("tokens_per_week", NOW) == 1100 and rebuilt["alice"].used("requests_per_minute", NOW) == 2
    assert rebuilt["bob"].used("tokens_per_day", NOW) == 0


def test_unpriced_models_cost_nothing_and_are_named():
    unpriced = set()
    got = usage_from_records([ledger_record("alice", NOW - 10, 1000, 100, model="gpt-x"),
                              ledger_record("alice", NOW - 10, 1_000_000, 0)], ["alice"], NOW, PRICES, unpriced)
    assert unpriced == {"gpt-x"}
    assert got["alice"].used("usd_per_day", NOW) == pytest.approx(2.0)
    assert got["alice"].used("tokens_per_day", NOW) == 1_001_100
    assert usage_from_records([ledger_record("alice", NOW - 10, 1, 1)], ["alice"], NOW)["alice"].used("usd_per_day", NOW) == 0
