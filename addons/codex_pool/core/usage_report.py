"""Usage reports from ledger records: aggregation, costs, and table / CSV / JSON output.

Pure functions, no I/O: `aggregate()` consumes any iterable of records in one pass (a
`LedgerStore.query()` iterator included), so memory grows with the number of rows, not records.
All three output forms print the same numbers: counts are ints and `cost_usd` is rounded to
`COST_DECIMALS` once, in `aggregate()`; totals are sums of the rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from codex_pool.core.ledger import TOKEN_FIELDS, TURN_KINDS  # the records' token counts; the kinds that are turns

GROUP_KEYS = ("account", "day", "model", "key")  # key: the client key's name ("(unknown)" without keys)
NOT_ERRORS = frozenset({"ok", "failed_over", "client_cancelled", "unparsed"})  # unparsed: served, end unreadable
# side_4xx: a client's side request (Codex's plugins, settings, analytics, ...) answered 4xx by the
# backend; counted apart so a report shows no errors where nothing failed (a refused turn is an error)
COUNT_FIELDS = ("requests", "turns", *TOKEN_FIELDS, "failed_over", "errors", "cancelled", "side_4xx")
COST_DECIMALS = 4
UNKNOWN = "(unknown)"

# Table column titles (CSV and JSON use the field names).
TABLE_TITLES = {
    "account": "account", "day": "day", "model": "model", "key": "key",
    "requests": "requests", "turns": "turns",
    "input_tokens": "input", "cached_input_tokens": "cached", "output_tokens": "output",
    "reasoning_tokens": "reasoning", "total_tokens": "total",
    "failed_over": "failed over", "errors": "errors", "side_4xx": "side 4xx", "cancelled": "cancelled",
    "cost_usd": "cost $",
}
NULL_COST = "n/a"


def check_group(group: Sequence[str]) -> tuple[str, ...]:
    """Validate a grouping: keys from GROUP_KEYS, each at most once, order kept."""
    out = tuple(group)
    bad = [k for k in out if k not in GROUP_KEYS]
    if bad:
        raise ValueError(f"unknown group key {', '.join(map(repr, bad))}; allowed: {', '.join(GROUP_KEYS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"group key repeated in {','.join(out)}")
    return out


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else UNKNOWN


def _day(ts: Any) -> str:
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        try:
            return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):
            pass
    return UNKNOWN


def _key(record: Mapping[str, Any], group: Sequence[str]) -> tuple[str, ...]:
    out = []
    for k in group:
        if k == "day":
            out.append(_day(record.get("ts")))
        else:
            out.append(_text(record.get(k)))
    return tuple(out)


def record_cost(record: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]]) -> float | None:
    """US dollars for one record; None when it used tokens and its model has no price. A record
    without tokens (a models listing, a failed attempt) costs 0 whatever its model."""
    inp = _int(record.get("input_tokens"))
    cached = min(_int(record.get("cached_input_tokens")), inp)
    out = _int(record.get("output_tokens"))  # reasoning tokens are already part of output tokens
    if inp == 0 and out == 0:
        return 0.0
    model = record.get("model")
    price = prices.get(model) if isinstance(model, str) else None
    if price is None:
        return None
    p_in = float(price["input"])
    p_cached = float(price.get("cached_input", p_in))
    return ((inp - cached) * p_in + cached * p_cached + out * float(price["output"])) / 1e6


def aggregate(records: Iterable[Mapping[str, Any]], group: Sequence[str],
              prices: Mapping[str, Mapping[str, float]] | None = None, *,
              unpriced: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per distinct group key tuple, sorted by the keys in `group` order.

    `day` is the UTC date of `ts`; a missing account or model is "(unknown)". With `prices`
    (model -> {input, cached_input, output} in $ per million tokens) each row gets `cost_usd`,
    None when any of its records used tokens of a model without a price; the names of such models
    are added to `unpriced` when a set is passed.
    """
    group = check_group(group)
    acc: dict[tuple[str, ...], list] = {}
    for rec in records:
        key = _key(rec, group)
        row = acc.get(key)
        if row is None:
            row = acc[key] = [dict.fromkeys(COUNT_FIELDS, 0), 0.0, False]
        counts = row[0]
        counts["requests"] += 1
        if rec.get("kind") in TURN_KINDS:
            counts["turns"] += 1
        for f in TOKEN_FIELDS:
            counts[f] += _int(rec.get(f))
        outcome = rec.get("outcome")
        if outcome == "failed_over":
            counts["failed_over"] += 1
        elif outcome == "client_cancelled":
            counts["cancelled"] += 1
        elif outcome not in NOT_ERRORS:
            if rec.get("kind") not in TURN_KINDS and str(outcome).startswith("client_error_"):
                counts["side_4xx"] += 1  # a client's side request (plugins, settings, ...) refused: no failure
            else:
                counts["errors"] += 1
        if prices is not None:
            cost = record_cost(rec, prices)
            if cost is None:
                row[2] = True
                if unpriced is not None:
                    unpriced.add(_text(rec.get("model")))
            else:
                row[1] += cost
    rows = []
    for key in sorted(acc):
        counts, cost, unknown = acc[key]
        row: dict[str, Any] = dict(zip(group, key))
        row.update(counts)
        if prices is not None:
            row["cost_usd"] = None if unknown else round(cost, COST_DECIMALS)
        rows.append(row)
    return rows


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums of the rows' counts; `cost_usd` (when the rows have it) is None if any row's is."""
    out: dict[str, Any] = {f: sum(_int(r.get(f)) for r in rows) for f in COUNT_FIELDS}
    if any("cost_usd" in r for r in rows):
        costs = [r.get("cost_usd") for r in rows]
        out["cost_usd"] = None if any(c is None for c in costs) else round(sum(costs), COST_DECIMALS)
    return out


def format_cost(value: float | None) -> str:
    return NULL_COST if value is None else f"{value:,.{COST_DECIMALS}f}"


def _cell(field: str, value: Any) -> str:
    if field == "cost_usd":
        return format_cost(value)
    if field in COUNT_FIELDS:
        return f"{_int(value):,}"
    return str(value)


def to_table(rows: Sequence[Mapping[str, Any]], group: Sequence[str], prices_given: bool) -> str:
    """An aligned text table: group keys left-aligned, numbers right-aligned with thousands
    separators, a rule, and a total line. Costs are `n/a` when a model has no price."""
    group = check_group(group)
    label_cols = list(group) or ["rows"]
    cols = [*label_cols, *COUNT_FIELDS, *(["cost_usd"] if prices_given else [])]
    body: list[list[str]] = []
    for r in rows:
        labels = [str(r.get(k, "")) for k in group] if group else ["all"]
        body.append(labels + [_cell(f, r.get(f)) for f in cols[len(label_cols):]])
    tot = totals(rows)
    if prices_given and "cost_usd" not in tot:
        tot["cost_usd"] = 0.0
    total_line = ["total"] + [""] * (len(label_cols) - 1) + [_cell(f, tot.get(f)) for f in cols[len(label_cols):]]
    header = [TABLE_TITLES.get(c, c) for c in cols]
    widths = [max(len(line[i]) for line in [header, *body, total_line]) for i in range(len(cols))]

    def fmt(line: list[str]) -> str:
        cells = [line[i].ljust(widths[i]) if i < len(label_cols) else line[i].rjust(widths[i]) for i in range(len(cols))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(b) for b in body), rule, fmt(total_line)]) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], group: Sequence[str] | None = None) -> str:
    """A header line and one line per row: plain numbers (no separators), cost with
    COST_DECIMALS decimals, empty when unknown. `group` defaults to the keys the rows carry."""
    if group is None:  # the rows' own keys, in their order
        group = [k for k in rows[0] if k in GROUP_KEYS] if rows else []
    with_cost = any("cost_usd" in r for r in rows)
    cols = [*group, *COUNT_FIELDS, *(["cost_usd"] if with_cost else [])]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        line = []
        for c in cols:
            v = r.get(c)
            if c == "cost_usd":
                line.append("" if v is None else f"{v:.{COST_DECIMALS}f}")
            elif c in COUNT_FIELDS:
                line.append(str(_int(v)))
            else:
                line.append(str(v))
        w.writerow(line)
    return buf.getvalue()


def format_when(value: float | str | None) -> str | None:
    """A unix time as `YYYY-MM-DDTHH:MM:SSZ` (strings and None pass through)."""
    if value is None or isinstance(value, str):
        return value
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_json(rows: Sequence[Mapping[str, Any]], group: Sequence[str], since: float | str | None,
            until: float | str | None) -> dict[str, Any]:
    """`{"since", "until", "group", "rows", "totals"}`; since/until as ISO-8601 UTC or null."""
    return {
        "since": format_when(since),
        "until": format_when(until),
        "group": list(group),
        "rows": [dict(r) for r in rows],
        "totals": totals(rows),
    }


def parse_when(text: str, *, end_of_day: bool = False) -> float:
    """`2026-11-01` (midnight UTC; with end_of_day the next midnight, so a date-only upper bound
    includes that whole day) or an ISO date-time such as `2026-11-01T12:00:00Z` / `...+02:00`
    (no offset means UTC). Raises ValueError with a message saying what is accepted."""
    s = text.strip()
    try:
        if len(s) == 10 and s[4] == "-" and s[7] == "-":
            d = date.fromisoformat(s)
            start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
            return (start + timedelta(days=1) if end_of_day else start).timestamp()
        if s[-1:] in ("z", "Z"):
            s = s[:-1] + "+00:00"
        dt = datetime.fromisoformat(s)
        if len(s) < 13 or s[10] not in "T ":
            raise ValueError(s)
    except (ValueError, IndexError, OverflowError):
        raise ValueError(f"{text!r} is not a date or date-time; use YYYY-MM-DD or "
                         f"YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] (UTC when no offset is given)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


__all__ = [
    "GROUP_KEYS", "aggregate", "check_group", "format_when", "parse_when", "record_cost",
    "to_csv", "to_json", "to_table", "totals",
]
