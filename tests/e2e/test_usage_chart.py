"""scripts/usage-report --chart as a user runs it (a subprocess over a ledger written with
LedgerStore into a tmp data_dir): the PNG's pixel size, every account and model in the legends (read
from the SVG's texts, and from the figure drawn for the same rows), the period filters, and the
message when matplotlib cannot be imported (a real import failure in the script's own process)."""

import os
import struct
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from codex_pool.cli import usage_chart
from codex_pool.core.usage_report import aggregate
from codex_pool.storage.ledger_store import LedgerStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "usage-report"
ACCOUNTS = ("alice", "bob", "carol")
MODELS = ("gpt-5.1-codex", "gpt-5.1-codex-mini")
PNG_SIZE = (1200, 800)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def rec(t, account, model, inp, out, kind="sse_turn", outcome="ok"):
    return {"ts": ts(t), "account": account, "model": model, "kind": kind, "status": 200, "outcome": outcome,
            "input_tokens": inp, "cached_input_tokens": inp // 3, "output_tokens": out, "reasoning_tokens": out // 2,
            "total_tokens": inp + out, "ttfb_ms": 120.0, "duration_ms": 900.0, "attempt": 1,
            "conversation": "0123456789abcdef", "path": "/backend-api/codex/responses"}


def make_records():
    """Five days (2026-11-03 .. 2026-11-07, none on the 5th); carol only works from the 6th and
    only on the mini model; a models listing (no model, no tokens) and a failed-over attempt."""
    out = []
    for day in (3, 4, 6, 7):
        for i, account in enumerate(ACCOUNTS):
            if account == "carol" and day < 6:
                continue
            for j, model in enumerate(MODELS):
                if account == "carol" and model != MODELS[1]:
                    continue
                for n in range(2):
                    out.append(rec(f"2026-11-{day:02d}T{9 + i:02d}:{10 * j + n:02d}:00", account, model,
                                   inp=10_000 * (i + 1) * day + 1_000 * n, out=500 * day))
    out.append(rec("2026-11-03T08:00:00", "alice", None, 0, 0, kind="models"))
    out.append(rec("2026-11-04T08:00:00", "bob", MODELS[0], 0, 0, outcome="failed_over"))
    return out


RECORDS = make_records()


@pytest.fixture
def project(tmp_path):
    (tmp_path / "mitm.yaml").write_text("data_dir: data\npool_dir: pool\n")
    store = LedgerStore(tmp_path / "data" / "ledger", segment_records=7)  # several segments per day
    assert store.open(now=ts("2026-11-07T23:00:00")) == []
    store.append(RECORDS[:20])
    store.append(RECORDS[20:])
    return tmp_path


def run(*args, config, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "USAGE_REPORT_REEXEC")}
    env.update(env_extra or {})
    return subprocess.run([str(SCRIPT), "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(el.itertext()).strip() for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "text"]


def rows_for(since=None, until=None):
    recs = [r for r in RECORDS if (since is None or r["ts"] >= ts(since)) and (until is None or r["ts"] < ts(until))]
    return aggregate(recs, ("day", "account")), aggregate(recs, ("day", "model"))


def test_png_size_and_legend(project):
    out = project / "usage.png"
    p = run("--chart", str(out), config=project / "mitm.yaml")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert png_size(out) == PNG_SIZE
    from PIL import Image  # comes with matplotlib
    with Image.open(out) as im:
        assert im.size == PNG_SIZE and im.format == "PNG"
        assert len(im.convert("RGB").getcolors(1 << 20)) > 20  # drawn, not blank
    assert f"wrote {out} (png, 1200x800, 5 day(s) over the whole ledger)" in p.stdout
    # what the script reports it put in the legends: every account and model (the listing's
    # missing model is "(unknown)"), largest total first
    def ranked(key):
        totals = {}
        for r in RECORDS:
            name = r[key] or "(unknown)"
            totals[name] = totals.get(name, 0) + r["total_tokens"]
        return ", ".join(sorted(totals, key=lambda n: (-totals[n], n)))

    assert ranked("account") == "bob, alice, carol"
    assert f"accounts: {ranked('account')};" in p.stdout
    assert p.stdout.rstrip().endswith(f"models: {ranked('model')}") and "(unknown)" in ranked("model")
    # the legends of the figure drawn for the same rows, read back from matplotlib's legend objects
    by_account, by_model = rows_for()
    labels = usage_chart.legend_labels(by_account, by_model)
    assert sorted(labels["account"]) == sorted(ACCOUNTS)
    assert sorted(labels["model"]) == sorted([*MODELS, "(unknown)"])
    # the script's one-pass roll-up gives the same rows as aggregating per day,account / day,model
    fine = aggregate(RECORDS, ("day", "account", "model"))
    assert usage_chart.rollup(fine, ("day", "account")) == by_account
    assert usage_chart.rollup(fine, ("day", "model")) == by_model


def test_svg_names_every_account_and_model_and_the_period(project):
    out = project / "usage.svg"
    p = run("--chart", str(out), "--since", "2026-11-02", "--until", "2026-11-07", config=project / "mitm.yaml")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    texts = svg_texts(out)
    legend_names = {t.rsplit("  ", 1)[0] for t in texts}
    for name in (*ACCOUNTS, *MODELS):
        assert name in legend_names, (name, texts)
    # the title carries the period; every day of it is on the x axis, the empty 2nd and 5th too
    assert "codex-pool: tokens per day from 2026-11-02T00:00:00Z to 2026-11-08T00:00:00Z" in texts
    assert "2026-11-02 to 2026-11-07 (UTC)" in texts  # the title's second line: the days drawn
    assert [t for t in texts if t[:3] == "11-"] == [f"11-{d:02d}" for d in range(2, 8)]
    # totals in the legend match the ledger: bob's tokens over the whole period
    bob = sum(r["total_tokens"] for r in RECORDS if r["account"] == "bob")
    assert f"bob  {usage_chart.human(bob)}" in texts


def test_since_until_select_the_days_and_names(project):
    out = project / "early.png"
    p = run("--chart", str(out), "--since", "2026-11-03", "--until", "2026-11-04", config=project / "mitm.yaml")
    assert p.returncode == 0, p.stderr
    assert "2 day(s)" in p.stdout and "accounts: bob, alice;" in p.stdout  # carol starts on the 6th
    assert png_size(out) == PNG_SIZE
    labels = usage_chart.legend_labels(*rows_for("2026-11-03", "2026-11-05"))
    assert sorted(labels["account"]) == ["alice", "bob"]
    # a period with nothing recorded: a friendly line, exit 0, no file
    none = project / "none.png"
    p = run("--chart", str(none), "--since", "2026-12-01", config=project / "mitm.yaml")
    assert p.returncode == 0 and "No usage recorded since 2026-12-01T00:00:00Z" in p.stderr
    assert "no chart written" in p.stderr and not none.exists()


def test_without_matplotlib_chart_says_how_to_get_it(project, tmp_path):
    """A `matplotlib` package that fails to import, first on PYTHONPATH of the script's own process
    (kept through its re-exec into .venv): --chart exits 2 with the install command; the other
    reports never import matplotlib, so they still work."""
    shadow = tmp_path / "shadow"
    (shadow / "matplotlib").mkdir(parents=True)
    (shadow / "matplotlib" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    env = {"PYTHONPATH": str(shadow)}
    out = project / "usage.png"
    p = run("--chart", str(out), config=project / "mitm.yaml", env_extra=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "--chart needs matplotlib" in p.stderr and "pip install -e '.[charts]'" in p.stderr
    assert "Traceback" not in p.stderr and not out.exists()
    p = run("--group", "account", config=project / "mitm.yaml", env_extra=env)
    assert p.returncode == 0 and p.stdout.startswith("Usage over the whole ledger"), p.stderr


def test_bad_chart_arguments_exit_2(project):
    p = run("--chart", str(project / "usage.jpg"), config=project / "mitm.yaml")
    assert p.returncode == 2 and "the chart file must end in .png or .svg" in p.stderr
    p = run("--chart", str(project / "usage.png"), "--group", "model", config=project / "mitm.yaml")
    assert p.returncode == 2 and "--group does not apply to --chart" in p.stderr
    p = run("--chart", str(project / "usage.png"), "--json", config=project / "mitm.yaml")
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
    p = run("--chart", str(project / "missing" / "usage.png"), config=project / "mitm.yaml")
    assert p.returncode == 2 and "cannot write" in p.stderr and "Traceback" not in p.stderr
