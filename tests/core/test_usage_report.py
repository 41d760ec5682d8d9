import csv
import io
import json
from datetime import datetime, timezone

import pytest

from codex_pool.core.usage_report import (
    COUNT_FIELDS,
    TABLE_TITLES,
    aggregate,
    check_group,
    parse_when,
    record_cost,
    to_csv,
    to_json,
    to_table,
    totals,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def rec(t, account, model, kind="sse_turn", outcome="ok", inp=0, cached=0, out=0, reasoning=0):
    return {"ts": ts(t), "account": account, "model": model, "kind": kind, "status": 200, "outcome": outcome,
            "input_tokens": inp, "cached_input_tokens": cached, "output_tokens": out,
            "reasoning_tokens": reasoning, "total_tokens": inp + out, "ttfb_ms": None, "duration_ms": None,
            "attempt": 1, "conversation": None, "path": "/backend-api/codex/responses"}


RECORDS = [
    rec("2026-11-01T10:00:00", "alice", "gpt-a", inp=1000, cached=400, out=100, reasoning=30),
    rec("2026-11-01T23:59:59", "alice", "gpt-a", kind="ws_turn", inp=2000, out=50),
    rec("2026-11-02T00:00:00", "alice", "gpt-b", kind="compaction", inp=500, cached=500, out=20),
    rec("2026-11-02T08:00:00", "alice", None, kind="models"),
    rec("2026-11-01T12:00:00", "bob", "gpt-a", outcome="failed_over"),
    rec("2026-11-01T12:00:01", "bob", "gpt-a", inp=3000, cached=1000, out=300, reasoning=100),
    rec("2026-11-02T09:00:00", "bob", "gpt-x", outcome="usage_limit_reached"),
    rec("2026-11-02T09:30:00", "bob", "gpt-x", inp=10, out=5),
    rec("2026-11-02T10:00:00", "bob", "gpt-a", kind="other", outcome="client_cancelled"),
    rec("2026-11-02T11:00:00", "bob", "gpt-a", outcome="server_error_503"),
    rec("2026-11-02T11:00:00", "carol", "gpt-a", kind="usage", outcome="connection_error"),
]

PRICES = {"gpt-a": {"input": 1.25, "cached_input": 0.125, "output": 10.0},
          "gpt-b": {"input": 2.0, "cached_input": 0.5, "output": 8.0}}


def project(rows, fields=("requests", "turns", "input_tokens", "cached_input_tokens", "output_tokens",
                          "reasoning_tokens", "total_tokens", "failed_over", "errors", "cancelled")):
    return [tuple(r[f] for f in fields) for r in rows]


# (group, expected keys in order, expected (requests, turns, input, cached, output, reasoning, total,
#  failed_over, errors, cancelled) per row)
GROUPINGS = [
    (("account",), [("alice",), ("bob",), ("carol",)], [
        (4, 3, 3500, 900, 170, 30, 3670, 0, 0, 0),
        (6, 5, 3010, 1000, 305, 100, 3315, 1, 2, 1),
        (1, 0, 0, 0, 0, 0, 0, 0, 1, 0),
    ]),
    (("day",), [("2026-11-01",), ("2026-11-02",)], [
        (4, 4, 6000, 1400, 450, 130, 6450, 1, 0, 0),
        (7, 4, 510, 500, 25, 0, 535, 0, 3, 1),
    ]),
    (("model",), [("(unknown)",), ("gpt-a",), ("gpt-b",), ("gpt-x",)], [
        (1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (7, 5, 6000, 1400, 450, 130, 6450, 1, 2, 1),
        (1, 1, 500, 500, 20, 0, 520, 0, 0, 0),
        (2, 2, 10, 0, 5, 0, 15, 0, 1, 0),
    ]),
    (("account", "day"), [("alice", "2026-11-01"), ("alice", "2026-11-02"), ("bob", "2026-11-01"),
                          ("bob", "2026-11-02"), ("carol", "2026-11-02")], [
        (2, 2, 3000, 400, 150, 30, 3150, 0, 0, 0),
        (2, 1, 500, 500, 20, 0, 520, 0, 0, 0),
        (2, 2, 3000, 1000, 300, 100, 3300, 1, 0, 0),
        (4, 3, 10, 0, 5, 0, 15, 0, 2, 1),
        (1, 0, 0, 0, 0, 0, 0, 0, 1, 0),
    ]),
    (("day", "account"), [("2026-11-01", "alice"), ("2026-11-01", "bob"), ("2026-11-02", "alice"),
                          ("2026-11-02", "bob"), ("2026-11-02", "carol")], None),
    (("account", "model"), [("alice", "(unknown)"), ("alice", "gpt-a"), ("alice", "gpt-b"), ("bob", "gpt-a"),
                            ("bob", "gpt-x"), ("carol", "gpt-a")], None),
    (("account", "day", "model"), [
        ("alice", "2026-11-01", "gpt-a"), ("alice", "2026-11-02", "(unknown)"), ("alice", "2026-11-02", "gpt-b"),
        ("bob", "2026-11-01", "gpt-a"), ("bob", "2026-11-02", "gpt-a"), ("bob", "2026-11-02", "gpt-x"),
        ("carol", "2026-11-02", "gpt-a")], None),
    ((), [()], [(11, 8, 6510, 1900, 475, 130, 6985, 1, 3, 1)]),
]


@pytest.mark.parametrize("group,keys,counts", GROUPINGS, ids=lambda v: ",".join(v) if isinstance(v, tuple) else None)
def test_grouping(group, keys, counts):
    rows = aggregate(RECORDS, group, None)
    assert [tuple(r[k] for k in group) for r in rows] == keys
    assert all(list(r)[: len(group)] == list(group) for r in rows)  # keys first, in the given order
    assert all("cost_usd" not in r for r in rows)
    if counts is not None:
        assert project(rows) == counts
    # whatever the grouping, the totals are the same
    assert totals(rows) == {f: v for f, v in zip(COUNT_FIELDS, (11, 8, 6510, 1900, 475, 130, 6985, 1, 3, 1, 0))}


def test_a_side_request_refused_is_not_an_error_but_a_refused_turn_is():
    """Codex's side requests (plugins, settings, analytics) answered 4xx are counted apart; a turn
    the backend refused (400) is a real failure."""
    records = [rec("2026-11-02T12:00:00", "alice", None, kind="other", outcome="client_error_404"),
               rec("2026-11-02T12:00:01", "alice", None, kind="usage", outcome="client_error_403"),
               rec("2026-11-02T12:00:02", "alice", "gpt-a", outcome="client_error_400"),
               rec("2026-11-02T12:00:03", "alice", None, kind="other", outcome="server_error_502")]
    [row] = aggregate(records, ("account",), None)
    assert (row["requests"], row["side_4xx"], row["errors"]) == (4, 2, 2)


def test_input_order_does_not_matter():
    group = ("account", "day", "model")
    assert aggregate(list(reversed(RECORDS)), group, PRICES) == aggregate(RECORDS, group, PRICES)


def test_missing_fields_count_as_zero_or_unknown():
    rows = aggregate([{"ts": ts("2026-11-01T00:00:00")}, {"ts": None, "account": "", "input_tokens": None}],
                     ("account", "day", "model"), None)
    assert [(r["account"], r["day"], r["model"], r["requests"], r["errors"], r["input_tokens"]) for r in rows] == [
        ("(unknown)", "(unknown)", "(unknown)", 1, 1, 0),
        ("(unknown)", "2026-11-01", "(unknown)", 1, 1, 0),
    ]


@pytest.mark.parametrize("group", [("account", "acount"), ("day", "day"), ("hour",)])
def test_bad_group_keys_are_refused(group):
    with pytest.raises(ValueError):
        aggregate(RECORDS, group, None)
    with pytest.raises(ValueError):
        check_group(group)


# --- costs ---------------------------------------------------------------------------------------

M = 1e6
COSTS = [
    # record, expected dollars
    (rec("2026-11-01T00:00:00", "a", "gpt-a", inp=1000, cached=400, out=100),
     (600 * 1.25 + 400 * 0.125 + 100 * 10) / M),
    (rec("2026-11-01T00:00:00", "a", "gpt-a", inp=1000, cached=0, out=0), 1000 * 1.25 / M),
    (rec("2026-11-01T00:00:00", "a", "gpt-a", inp=1000, cached=1000, out=0), 1000 * 0.125 / M),
    (rec("2026-11-01T00:00:00", "a", "gpt-a", inp=10, cached=50, out=0), 10 * 0.125 / M),  # cached capped at input
    (rec("2026-11-01T00:00:00", "a", "gpt-a", out=1000, reasoning=900), 1000 * 10 / M),  # reasoning inside output
    (rec("2026-11-01T00:00:00", "a", "gpt-x", inp=1, out=1), None),  # no price
    (rec("2026-11-01T00:00:00", "a", None, inp=1, out=1), None),  # no model
    (rec("2026-11-01T00:00:00", "a", None, kind="models"), 0.0),  # no tokens: free whatever the model
    (rec("2026-11-01T00:00:00", "a", "gpt-c", inp=1_000_000, out=0), 3.0),  # cached_input defaults to input
]


@pytest.mark.parametrize("record,expected", COSTS)
def test_record_cost(record, expected):
    prices = dict(PRICES, **{"gpt-c": {"input": 3.0, "output": 1.0}})
    got = record_cost(record, prices)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize("group,expected", [
    # gpt-a: alice 0.0018 + 0.003, bob 0.005625 → 0.010425; gpt-b: alice 0.00041; gpt-x: no price
    (("model",), {"(unknown)": 0.0, "gpt-a": 0.010425, "gpt-b": 0.00041, "gpt-x": None}),
    (("account",), {"alice": 0.00521, "bob": None, "carol": 0.0}),
    (("day",), {"2026-11-01": 0.010425, "2026-11-02": None}),
])
def test_costs_per_row_with_unknown_models(group, expected):
    unpriced: set = set()
    rows = aggregate(RECORDS, group, PRICES, unpriced=unpriced)
    got = {r[group[0]]: r["cost_usd"] for r in rows}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == (pytest.approx(round(v, 4)) if v is not None else None), k
    assert unpriced == {"gpt-x"}
    assert totals(rows)["cost_usd"] is None


def test_cost_arithmetic_by_hand():
    alice = (600 * 1.25 + 400 * 0.125 + 100 * 10 + 2000 * 1.25 + 50 * 10) / M  # 0.0048 on gpt-a
    alice += (0 * 2.0 + 500 * 0.5 + 20 * 8.0) / M  # 0.00041 on gpt-b
    rows = aggregate([r for r in RECORDS if r["account"] == "alice"], ("account",), PRICES)
    assert rows[0]["cost_usd"] == round(alice, 4) == 0.0052
    assert totals(rows)["cost_usd"] == 0.0052


def test_no_prices_no_cost_column_and_prices_for_everything_give_a_total():
    assert "cost_usd" not in totals(aggregate(RECORDS, ("account",), None))
    everything = dict(PRICES, **{"gpt-x": {"input": 100.0, "cached_input": 100.0, "output": 100.0}})
    rows = aggregate(RECORDS, ("account",), everything)
    assert all(r["cost_usd"] is not None for r in rows)
    assert totals(rows)["cost_usd"] == round(sum(r["cost_usd"] for r in rows), 4)


# --- output forms agree ------------------------------------------------------------------------------


def parse_table(text, group):
    """Back to numbers: rows and the total line of a to_table() output."""
    lines = text.rstrip("\n").split("\n")
    header = [h for h in lines[0].split("  ") if h.strip()]
    header = [h.strip() for h in header]
    titles = {v: k for k, v in TABLE_TITLES.items()}
    fields = [titles.get(h, h) for h in header]
    assert set(lines[1]) <= {"-", " "} and set(lines[-2]) <= {"-", " "}
    width = len(group) or 1

    def parse(line):
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if line.startswith("total"):
            cells = cells[:1] + [""] * (width - 1) + cells[1:]
        out = {}
        for f, c in zip(fields, cells):
            if f in COUNT_FIELDS:
                out[f] = int(c.replace(",", ""))
            elif f == "cost_usd":
                out[f] = None if c == "n/a" else float(c.replace(",", ""))
            else:
                out[f] = c
        return out
    return [parse(x) for x in lines[2:-2]], parse(lines[-1])


def parse_csv(text):
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        r = {}
        for k, v in row.items():
            if k in COUNT_FIELDS:
                assert v.isdigit(), v  # plain numbers
                r[k] = int(v)
            elif k == "cost_usd":
                r[k] = None if v == "" else float(v)
            else:
                r[k] = v
        out.append(r)
    return out


BIG = [rec("2026-11-03T00:00:00", "dave", "gpt-a", inp=123_456_789, cached=23_456_789, out=9_876_543)]


@pytest.mark.parametrize("group", [("account",), ("day",), ("model",), ("account", "model"),
                                   ("model", "day", "account"), ()])
@pytest.mark.parametrize("prices", [None, PRICES, dict(PRICES, **{"gpt-x": {"input": 1.0, "output": 1.0}})])
def test_table_json_and_csv_agree_number_for_number(group, prices):
    rows = aggregate(RECORDS + BIG, group, prices)
    doc = json.loads(json.dumps(to_json(rows, group, ts("2026-11-01T00:00:00"), None)))
    assert doc["since"] == "2026-11-01T00:00:00Z" and doc["until"] is None and doc["group"] == list(group)
    table_rows, table_total = parse_table(to_table(rows, group, prices is not None), group)
    csv_rows = parse_csv(to_csv(rows, group))
    assert doc["rows"] == rows
    if group:
        assert table_rows == rows
        assert csv_rows == [{k: (str(v) if k in group else v) for k, v in r.items()} for r in rows]
    else:
        assert [{k: v for k, v in r.items() if k != "rows"} for r in table_rows] == rows
        assert csv_rows == rows
    total = {k: v for k, v in table_total.items() if k not in (*group, "rows")}
    assert total == doc["totals"] == totals(rows)


def test_table_layout():
    rows = aggregate(RECORDS + BIG, ("account",), PRICES)
    text = to_table(rows, ("account",), True)
    lines = text.splitlines()
    assert lines[0].split() == ["account", "requests", "turns", "input", "cached", "output", "reasoning", "total",
                                "failed", "over", "errors", "cancelled", "side", "4xx", "cost", "$"]
    assert len({len(line) for line in lines[:2]}) == 1  # header as wide as the rule
    assert "123,456,789" in text and "123456789" not in text
    assert lines[-1].startswith("total ") and lines[-1].endswith("n/a")
    dave = next(x for x in lines if x.startswith("dave"))
    assert dave.endswith("226.6975")  # (100M*1.25 + 23.456789M*0.125 + 9.876543M*10)/1M, 4 decimals
    # numbers are right-aligned: every data line ends at the same column
    assert len({len(x) for x in lines[2:-2] if not x.endswith("n/a")} | {len(lines[1])}) == 1


def test_csv_has_plain_numbers_and_empty_unknown_cost():
    text = to_csv(aggregate(RECORDS + BIG, ("model",), PRICES))
    lines = text.splitlines()
    assert lines[0] == ("model,requests,turns,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,"
                        "total_tokens,failed_over,errors,cancelled,side_4xx,cost_usd")
    assert "gpt-x,2,2,10,0,5,0,15,0,1,0,0," in lines
    assert any(x.startswith("gpt-a,8,6,123462789,") for x in lines)


def test_empty_report():
    assert aggregate([], ("account",), PRICES) == []
    assert to_json([], ("account",), None, None)["totals"]["requests"] == 0
    assert to_csv([], ("account",)).splitlines()[0].startswith("account,requests,")
    assert to_table([], ("account",), True).splitlines()[-1].split() == ["total"] + ["0"] * 11 + ["0.0000"]


# --- dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,end_of_day,expected", [
    ("2026-11-01", False, "2026-11-01T00:00:00"),
    ("2026-11-01", True, "2026-11-02T00:00:00"),
    ("2026-12-31", True, "2027-01-01T00:00:00"),
    ("2026-11-01T12:00:00Z", False, "2026-11-01T12:00:00"),
    ("2026-11-01T12:00:00Z", True, "2026-11-01T12:00:00"),  # a time is taken as given
    ("2026-11-01T12:00", False, "2026-11-01T12:00:00"),  # no offset: UTC
    ("2026-11-01 12:00:00", False, "2026-11-01T12:00:00"),
    ("2026-11-01T14:00:00+02:00", False, "2026-11-01T12:00:00"),
    ("2026-11-01T12:00:00.5z", False, "2026-11-01T12:00:00.5"),
])
def test_parse_when(text, end_of_day, expected):
    assert parse_when(text, end_of_day=end_of_day) == ts(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-11-31", "20261101", "2026-11-01T25:00",
                                  "11/01/2026", "2026-11"])
def test_parse_when_refuses_with_a_clear_message(text):
    with pytest.raises(ValueError) as e:
        parse_when(text)
    assert "YYYY-MM-DD" in str(e.value) and repr(text) in str(e.value)
