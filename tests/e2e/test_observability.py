"""Observability end to end: /metrics against a scripted run, promtool, a real Prometheus scrape,
stored flows without tokens, the content view, scripts/status, mitmweb's loopback guard.

The tests only read what the scripted run left, so it runs twice per module, not once per test:
`scripted` keeps its proxy running, `recorded` stops it so that its flows file is complete."""

import json
import re
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from mitmproxy import contentviews, io
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from codex_pool.core import stream_view
from codex_pool.mitm.contentview import codex_stream
from tests.support.flows import CLIENT_TOKEN, RESPONSES, redirecting_client, turn_body
from tests.support.procs import BIN, ROOT, FakeBackend, Proc, Proxy, free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, name, **labels):
    """The sum over the series of `name` whose labels include `labels` (e.g. over every model)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= set(ls))


def scripted_run(root):
    """A run with turns on two accounts, a failover and a refresh; flows written with -w.
    (backend, proxy, root, flows file); the caller stops both."""
    pool = root / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    flows = root / "flows.mitm"
    originals = {p.name: json.loads(p.read_text())["tokens"] for p in pool.glob("*.json")}
    (root / "original-tokens.json").write_text(json.dumps(originals))  # before the refresh rotates them
    try:
        proxy = Proxy(backend.url, root / "proxy",
                      f"pool_dir: {pool}\ndata_dir: data\npolicy: fill_first\ntoken_url: {backend.url}/oauth/token\n"
                      "usage_poll_seconds: 0\n", extra=["-w", str(flows)])
    except BaseException:
        backend.stop()
        raise
    with redirecting_client(proxy) as c:
        h = {"authorization": f"Bearer {CLIENT_TOKEN}"}
        for key in ("one", "two", "one"):
            assert c.post(RESPONSES, json=turn_body(key), headers={**h, "session-id": key}).status_code == 200
        backend.fault(kind="unauthorized", account="alice")  # refresh, then served on alice again
        assert c.post(RESPONSES, json=turn_body("one"), headers={**h, "session-id": "one"}).status_code == 200
        backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)  # fails over to bob
        assert c.post(RESPONSES, json=turn_body("two"), headers={**h, "session-id": "two"}).status_code == 200
    return backend, proxy, root, flows


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The scripted run with its proxy still running (tests only read from it)."""
    backend, proxy, root, flows = scripted_run(tmp_path_factory.mktemp("scripted"))
    yield backend, proxy, root, flows
    proxy.stop()
    backend.stop()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Another scripted run whose proxy has been stopped, so its flows file is complete."""
    backend, proxy, root, flows = scripted_run(tmp_path_factory.mktemp("recorded"))
    proxy.stop()
    yield backend, root, flows
    backend.stop()


def test_metrics_match_the_scripted_run(scripted):
    backend, proxy, tmp_path, _ = scripted
    r = proxy.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    turns = [x for x in backend.requests() if x["path"].startswith("/backend-api/codex/responses")]
    for name in ("alice", "bob"):
        ok = sum(1 for t in turns if t["account"] == name and t["status"] == 200)
        assert value(m, "codex_pool_requests_total", account=name, kind="sse_turn", status_class="2xx") == ok
        sent = backend.state()["accounts"][name]["usage_totals"]
        assert value(m, "codex_pool_tokens_total", account=name, type="input") == sent["input_tokens"]
        assert value(m, "codex_pool_tokens_total", account=name, type="cached_input") == sent["cached_tokens"]
        assert value(m, "codex_pool_tokens_total", account=name, type="output") == sent["output_tokens"]
    assert value(m, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="4xx") == 2  # 401 + 429
    assert value(m, "codex_pool_failovers_total", reason="usage_limit_reached") == 1
    assert value(m, "codex_pool_token_refreshes_total", account="alice", result="refreshed") == 1
    # every account's refresh results are there from 0 (an alert then sees the first failure as an increase)
    assert {dict(ls)["result"]: v for (n, ls), v in m.items() if n == "codex_pool_token_refreshes_total"
            and dict(ls)["account"] == "bob"} == dict.fromkeys(("refreshed", "adopted", "failed_transient", "failed_permanent"), 0)
    assert value(m, "codex_pool_account_state", account="alice", state="limited") == 1
    assert value(m, "codex_pool_account_usable", account="alice") == 0
    assert value(m, "codex_pool_account_usable", account="bob") == 1
    assert value(m, "codex_pool_accounts", state="usable") == 1 and value(m, "codex_pool_accounts", state="limited") == 1
    assert value(m, "codex_pool_sticky_conversations") == 2
    assert 0 < value(m, "codex_pool_account_used_ratio", account="bob", window="primary") < 1
    assert value(m, "codex_pool_upstream_ttfb_seconds_count", kind="sse_turn") == len(turns)
    for line in r.text.splitlines():  # every metric documented; no conversation ids or tokens in labels
        if line.startswith("# TYPE"):
            assert f"# HELP {line.split()[2]} " in r.text
    label_values = {v for _, labels in m for _, v in labels}
    assert label_values and not label_values & {"one", "two"}  # the scripted run's conversation keys
    tokens = [t for p in (tmp_path / "pool").glob("*.json") for t in json.loads(p.read_text())["tokens"].values()]
    assert tokens and not [t for t in tokens if t in r.text]


def test_promtool_accepts_the_metrics(scripted):
    promtool = Path(os.environ.get("CODEX_POOL_PROMETHEUS_BIN", "/usr/bin/prometheus")).with_name("promtool")
    if not promtool.exists():
        print("SKIP: promtool is not installed (scripts/install-prometheus could not install it)")
        pytest.skip("promtool is not installed (scripts/install-prometheus could not install it)")
    _, proxy, _, _ = scripted
    done = subprocess.run([str(promtool), "check", "metrics"], input=proxy.http.get("/metrics").text,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_a_real_prometheus_scrapes_it(scripted):
    binary = os.environ.get("CODEX_POOL_PROMETHEUS_BIN", "/usr/bin/prometheus")
    if not Path(binary).exists():
        print("SKIP: prometheus is not installed (scripts/install-prometheus could not install it)")
        pytest.skip("prometheus is not installed (scripts/install-prometheus could not install it)")
    backend, proxy, tmp_path, _ = scripted
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: codex-pool\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{proxy.port}']\n"
    )
    prom = Proc([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], ready=re.compile(r"Server is ready"), timeout=60)
    try:
        expected = sum(1 for t in backend.requests() if t["path"].startswith(RESPONSES))
        with httpx.Client(trust_env=False, timeout=10) as c:

            def scraped():
                r = c.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "sum(codex_pool_requests_total)"})
                return r.json()["data"]["result"]

            result = wait_for(scraped, 30, "Prometheus to scrape codex_pool_requests_total", interval=0.2)
            got = float(result[0]["value"][1])
            up = c.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up{job='codex-pool'}"}).json()
    finally:
        prom.stop()
    assert got == expected, (got, expected, prom.output()[-2000:])
    assert up["data"]["result"][0]["value"][1] == "1"


def test_stored_flows_hold_no_token_and_name_the_accounts(recorded):
    backend, tmp_path, flows_file = recorded
    stored = flows_file.read_bytes()
    secret = ("access_token", "refresh_token", "id_token")  # account ids are not secrets: they go upstream as headers
    minted = [v for tokens in json.loads((tmp_path / "original-tokens.json").read_text()).values()
              for k, v in tokens.items() if k in secret]
    for p in (tmp_path / "pool").glob("*.json"):
        minted += [v for k, v in json.loads(p.read_text())["tokens"].items() if k in secret]
    for account in ("alice", "bob"):  # the tokens the backend issued last (after the refresh)
        auth = backend.control("GET", f"accounts/{account}/auth")
        minted += [v for k, v in auth.get("tokens", auth.get("auth", {}).get("tokens", {})).items() if k in secret]
    assert minted and all(t.encode() not in stored for t in minted if t)
    with open(flows_file, "rb") as f:
        flows = [fl for fl in io.FlowReader(f).stream() if fl.request.path.startswith("/backend-api/codex/responses")]
    comments = [fl.comment for fl in flows]
    assert all("account alice" in c or "account bob" in c for c in comments)
    assert any("failed over (usage_limit_reached" in c for c in comments)
    assert any(fl.marked for fl in flows)
    assert any(fl.response and b"response.completed" in (fl.response.raw_content or b"") for fl in flows)  # body kept


def test_content_view_renders_a_recorded_stream(recorded):
    backend, tmp_path, flows_file = recorded
    with open(flows_file, "rb") as f:
        flow = next(fl for fl in io.FlowReader(f).stream()
                    if fl.response and fl.response.status_code == 200 and fl.request.path.startswith("/backend-api/codex/responses"))
    data = flow.response.get_content()
    contentviews.add(codex_stream)  # as the addon's load() does
    with taddons.context():  # mitmweb's choice reads the options
        result = contentviews.prettify_message(flow.response, flow)  # "auto": what mitmweb shows by default
    assert result.view_name == "Codex stream"
    text = result.text
    assert "Answer from fake account" in text and "usage" in text and "rate limits" in text and "completed" in text
    rendered = stream_view.render(stream_view.events_from_sse(data))
    assert [label for label, _ in rendered][0] == "response"


def test_scripts_status_on_a_known_pool_state(scripted):
    backend, proxy, tmp_path, _ = scripted
    cmd = [str(ROOT / "scripts" / "status"), "--config", str(proxy.config_path), "--url", proxy.url]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("1/2 accounts usable · policy fill_first")
    alice = next(line for line in lines if line.startswith("alice"))
    bob = next(line for line in lines if line.startswith("bob"))
    assert "limited (in 59m)" in alice or "limited (in 1h00m)" in alice
    assert "usable" in bob and "%" in bob
    short = subprocess.run(cmd + ["--short"], capture_output=True, text=True, timeout=60).stdout.strip()
    assert short.startswith("pool 1/2 · alice limited · bob ") and short.endswith("%")
    data = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=60).stdout)
    rows = {r["account"]: r for r in data["accounts"]}
    assert rows["alice"]["state"] == "limited" and rows["bob"]["sticky"] == 1 and rows["alice"]["sticky"] == 1
    down = subprocess.run([str(ROOT / "scripts" / "status"), "--url", "http://127.0.0.1:9"], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach the proxy" in down.stderr


SHARED = "client_keys: keys.json\nadmin_token: a-long-enough-admin-token\n"  # what beyond loopback needs (#13)


def _mitmweb(tmp_path, *settings, config="pool_dir: pool\n" + SHARED):
    (tmp_path / "pool").mkdir(exist_ok=True)
    (tmp_path / "mitm.yaml").write_text(config)
    return [str(BIN / "mitmweb"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
            "--set", "connection_strategy=lazy", "--set", f"confdir={tmp_path / 'conf'}",
            "--set", f"pool_config={tmp_path / 'mitm.yaml'}", "--set", "web_open_browser=false", *settings]


def test_mitmweb_beyond_loopback_is_refused_without_a_password(tmp_path):
    done = subprocess.run(_mitmweb(tmp_path, "--set", "web_host=0.0.0.0", "--set", f"web_port={free_port()}"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "without a password" in done.stdout + done.stderr
    assert "web_password" in done.stdout + done.stderr


def test_mitmweb_beyond_loopback_is_refused_without_client_keys_and_an_admin_token(tmp_path):
    """mitmweb's UI beyond loopback exposes the pool's port's flows and the pool: keys and the admin
    token are needed, as for the proxy (a password alone is not enough)."""
    done = subprocess.run(_mitmweb(tmp_path, "--set", "web_host=0.0.0.0", "--set", f"web_port={free_port()}",
                                   "--set", "web_password=whatever", config="pool_dir: pool\n"),
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "client_keys: keys.json" in out and "admin_token" in out


def test_mitmweb_beyond_loopback_starts_with_a_password_and_asks_for_it(tmp_path):
    import argon2

    port = free_port()
    hashed = argon2.PasswordHasher().hash("team-read-secret")  # as the README shows: a hash, not the password
    web = Proc(_mitmweb(tmp_path, "--set", "web_host=0.0.0.0", "--set", f"web_port={port}",
                        "--set", f"web_password={hashed}"), re.compile(r"Web server listening"))
    try:
        anonymous = httpx.get(f"http://127.0.0.1:{port}/flows", timeout=10)
        assert anonymous.status_code in (401, 403)  # nobody reads flows without the password
        wrong = httpx.get(f"http://127.0.0.1:{port}/flows", headers={"authorization": "Bearer guess"}, timeout=10)
        assert wrong.status_code in (401, 403)
        teammate = httpx.get(f"http://127.0.0.1:{port}/flows", headers={"authorization": "Bearer team-read-secret"},
                             timeout=10)
        assert teammate.status_code == 200 and teammate.json() == []
    finally:
        web.stop()
