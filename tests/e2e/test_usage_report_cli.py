"""scripts/usage-report as a user runs it: a subprocess (re-executing itself into .venv when started
by a python without the project), over a ledger written with LedgerStore into a tmp data_dir."""

import csv
import io
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from codex_pool.storage.ledger_store import LedgerStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "usage-report"

COUNTS = ("requests", "turns", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
          "total_tokens", "failed_over", "errors", "cancelled", "side_4xx")
TITLES = {"input": "input_tokens", "cached": "cached_input_tokens", "output": "output_tokens",
          "reasoning": "reasoning_tokens", "total": "total_tokens", "failed over": "failed_over", "side 4xx": "side_4xx", "cost $": "cost_usd"}


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def rec(t, account, model, kind="sse_turn", outcome="ok", inp=0, cached=0, out=0):
    return {"ts": ts(t), "account": account, "model": model, "kind": kind, "status": 200, "outcome": outcome,
            "input_tokens": inp, "cached_input_tokens": cached, "output_tokens": out, "reasoning_tokens": out // 2,
            "total_tokens": inp + out, "ttfb_ms": 120.0, "duration_ms": 900.0, "attempt": 1,
            "conversation": "0123456789abcdef", "path": "/backend-api/codex/responses"}


RECORDS = [
    rec("2026-10-31T23:30:00", "alice", "gpt-5.1-codex", inp=1_500_000, cached=500_000, out=20_000),
    rec("2026-11-01T00:10:00", "alice", "gpt-5.1-codex", inp=2_000_000, cached=1_000_000, out=30_000),
    rec("2026-11-01T09:00:00", "bob", "gpt-5.1-codex", outcome="failed_over"),
    rec("2026-11-01T09:00:01", "bob", "gpt-5.1-codex", inp=40_000, out=1_000),
    rec("2026-11-01T10:00:00", "bob", "gpt-5.1-codex-mini", inp=10_000, cached=2_000, out=500),
    rec("2026-11-01T11:00:00", "carol", None, kind="models"),
    rec("2026-11-01T23:59:59", "carol", "gpt-5.1-codex", outcome="usage_limit_reached"),
    rec("2026-11-02T00:00:00", "carol", "gpt-5.1-codex", inp=100, out=10),
    rec("2026-11-02T12:00:00", "alice", "gpt-5.1-codex", kind="compaction", outcome="client_cancelled"),
]

CONFIG = """\
data_dir: data
pool_dir: pool
prices:
  gpt-5.1-codex: {input: 1.25, cached_input: 0.125, output: 10}
  gpt-5.1-codex-mini: {input: 0.25, output: 2}
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "mitm.yaml").write_text(CONFIG)
    store = LedgerStore(tmp_path / "data" / "ledger", segment_records=3)  # several segments per day
    assert store.open(now=ts("2026-11-02T13:00:00")) == []
    store.append(RECORDS[:4])
    store.append(RECORDS[4:])
    return tmp_path


def run(*args, cwd=None, config=None):
    argv = [str(SCRIPT), *(["--config", str(config)] if config else []), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "USAGE_REPORT_REEXEC")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def table_rows(text: str, group: list[str]):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(group[0]))
    header = [h.strip() for h in lines[start].split("  ") if h.strip()]
    fields = [TITLES.get(h, h) for h in header]
    end = next(i for i in range(start + 2, len(lines)) if set(lines[i]) <= {"-", " "})
    out = []
    for line in [*lines[start + 2:end], lines[end + 1]]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if line.startswith("total"):
            cells = cells[:1] + [""] * (len(group) - 1) + cells[1:]
        row = {}
        for f, c in zip(fields, cells):
            if f in COUNTS:
                row[f] = int(c.replace(",", ""))
            elif f == "cost_usd":
                row[f] = None if c == "n/a" else float(c.replace(",", ""))
            else:
                row[f] = c
        out.append(row)
    return out[:-1], {k: v for k, v in out[-1].items() if k not in group}


def csv_rows(text: str):
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        out.append({k: (int(v) if k in COUNTS else (None if v == "" else float(v)) if k == "cost_usd" else v)
                    for k, v in row.items()})
    return out


@pytest.mark.parametrize("args,group", [
    ([], ["account"]),
    (["--group", "account,day,model"], ["account", "day", "model"]),
    (["--group", "model", "--since", "2026-11-01", "--until", "2026-11-01"], ["model"]),
    (["--group", "day,account", "--since", "2026-11-01T09:00:00Z", "--until", "2026-11-02T00:00:00Z"], ["day", "account"]),
])
def test_table_json_and_csv_agree(project, args, group):
    t = run(*args, config=project / "mitm.yaml")
    j = run(*args, "--json", config=project / "mitm.yaml")
    c = run(*args, "--csv", config=project / "mitm.yaml")
    for p in (t, j, c):
        assert p.returncode == 0 and p.stderr == "", p.stderr
    doc = json.loads(j.stdout)
    assert doc["group"] == group
    rows, total = table_rows(t.stdout, group)
    assert rows == doc["rows"] == csv_rows(c.stdout)
    assert total == doc["totals"]
    assert all("cost_usd" in r for r in doc["rows"])
    assert sum(r["requests"] for r in doc["rows"]) == doc["totals"]["requests"]


def test_numbers_and_date_bounds(project):
    doc = json.loads(run("--group", "account", "--since", "2026-11-01", "--until", "2026-11-01", "--json",
                         config=project / "mitm.yaml").stdout)
    assert doc["since"] == "2026-11-01T00:00:00Z" and doc["until"] == "2026-11-02T00:00:00Z"  # whole day
    by = {r["account"]: r for r in doc["rows"]}
    assert sorted(by) == ["alice", "bob", "carol"]
    assert by["alice"]["input_tokens"] == 2_000_000 and by["alice"]["requests"] == 1
    # (1M uncached × 1.25 + 1M cached × 0.125 + 30k × 10) / 1M
    assert by["alice"]["cost_usd"] == 1.675
    assert (by["bob"]["requests"], by["bob"]["failed_over"], by["bob"]["turns"]) == (3, 1, 3)
    # 40k × 1.25 + 1k × 10 = 0.06; mini: 8k × 0.25 + 2k × 0.25 (cached defaults to input) + 500 × 2 = 0.0035
    assert by["bob"]["cost_usd"] == 0.0635
    assert (by["carol"]["requests"], by["carol"]["errors"], by["carol"]["cost_usd"]) == (2, 1, 0.0)
    assert doc["totals"]["requests"] == 6 and doc["totals"]["cost_usd"] == 1.7385


def test_table_reads_well(project):
    p = run("--group", "account,model", config=project / "mitm.yaml")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0] == "Usage over the whole ledger, by account, model (ledger: %s)" % (project / "data" / "ledger")
    assert "3,500,000" in p.stdout  # alice's input, with thousands separators
    assert lines[-1].startswith("total")


def test_unpriced_model_is_explained(project):
    (project / "mitm.yaml").write_text("data_dir: data\nprices:\n  gpt-5.1-codex-mini: {input: 0.25, output: 2}\n")
    p = run(config=project / "mitm.yaml")
    assert p.returncode == 0
    assert "n/a" in p.stdout
    assert "no price for gpt-5.1-codex;" in p.stdout and str(project / "mitm.yaml") in p.stdout
    doc = json.loads(run("--json", config=project / "mitm.yaml").stdout)
    assert doc["totals"]["cost_usd"] is None


def test_no_prices_no_cost_column(project):
    (project / "mitm.yaml").write_text("data_dir: data\n")
    t = run(config=project / "mitm.yaml")
    assert t.returncode == 0 and "cost $" not in t.stdout and "n/a" not in t.stdout
    assert [line.split()[-1] for line in t.stdout.splitlines() if line.startswith("account")] == ["4xx"]
    assert "cost_usd" not in run("--csv", config=project / "mitm.yaml").stdout


def test_bad_since_is_a_clear_error(project):
    p = run("--since", "2026-11-31", config=project / "mitm.yaml")
    assert p.returncode == 2 and p.stdout == ""
    assert "--since: '2026-11-31' is not a date or date-time; use YYYY-MM-DD" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("--since", "2026-11-02", "--until", "2026-11-01", config=project / "mitm.yaml")
    assert p.returncode == 2 and "must be before --until" in p.stderr
    p = run("--group", "account,hour", config=project / "mitm.yaml")
    assert p.returncode == 2 and "unknown group key 'hour'" in p.stderr


def test_bad_config_exits_2_with_the_message(tmp_path):
    (tmp_path / "mitm.yaml").write_text("data_dir: data\nledger_dir: x\n")
    p = run(config=tmp_path / "mitm.yaml")
    assert p.returncode == 2 and "unknown key ledger_dir" in p.stderr and "Traceback" not in p.stderr


def test_empty_ledger_is_a_friendly_line(tmp_path):
    (tmp_path / "mitm.yaml").write_text("data_dir: data\n")
    p = run(config=tmp_path / "mitm.yaml")
    assert p.returncode == 0
    assert p.stdout.strip() == f"No usage recorded over the whole ledger (ledger: {tmp_path / 'data' / 'ledger'})."
    p = run("--json", config=tmp_path / "mitm.yaml")
    assert p.returncode == 0 and json.loads(p.stdout)["rows"] == [] and "No usage recorded" in p.stderr
    assert not (tmp_path / "data").exists()  # a report never creates anything


def test_a_corrupt_segment_is_skipped_with_a_warning(project):
    seg = sorted((project / "data" / "ledger" / "2026-11").glob("2026-11-01.*.json"))[0]
    seg.write_text("{")
    p = run("--json", config=project / "mitm.yaml")
    assert p.returncode == 0
    assert f"warning: ledger file {seg} skipped" in p.stderr
    assert json.loads(p.stdout)["totals"]["requests"] == len(RECORDS) - 3
    assert seg.read_text() == "{"
