"""The Grafana dashboard and the Prometheus alerting rules (dashboards/), against the real proxy.

One scripted run (client keys on, an admin token, turns on two accounts, a token refresh, a
failover, a refused key) gives the /metrics the proxy really exposes. The dashboard's and the
rules' PromQL may only name those metrics and their labels; promtool checks the rules and
unit-tests when each alert fires; a real Prometheus scrapes the run, loads the rules and answers
every dashboard query."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from codex_pool.core.client_keys import ClientKey, KeyFile, key_digest
from codex_pool.storage.keys_file import new_key, new_salt, save_keys
from prometheus_client.parser import text_string_to_metric_families

from tests.support.flows import RESPONSES, redirecting_client, turn_body
from tests.support.procs import ROOT, FakeBackend, Proc, Proxy, free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

DASHBOARD = ROOT / "dashboards" / "codex-pool.json"
ALERTS = ROOT / "dashboards" / "alerts.yml"
ADMIN = "dashboards-admin-token-0123456789"
JOB = "codex-pool"  # the README's scrape config
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
SYNTHETIC = {"up": TARGET_LABELS}  # series Prometheus makes itself (alerts only)


def prometheus_bin() -> Path:
    return Path(os.environ.get("CODEX_POOL_PROMETHEUS_BIN", "/usr/bin/prometheus"))


def skip_without(binary: Path) -> None:
    if not binary.exists():
        why = f"{binary.name} is not installed (scripts/install-prometheus could not install it)"
        print(f"SKIP: {why}")
        pytest.skip(why)


# --- the proxy world -------------------------------------------------------------------------------

class World:
    """Two accounts behind real mitmdump with client keys and an admin token, after a scripted run."""

    def __init__(self, root: Path):
        pool = root / "pool"
        pool.mkdir(parents=True)
        keys_path = root / "proxy" / "keys.json"
        keys_path.parent.mkdir(parents=True)
        salt, self.key = new_salt(), new_key()
        save_keys(keys_path, KeyFile(salt, [ClientKey(name="team", digest=key_digest(salt, self.key), created=time.time())]))
        self.backend = FakeBackend(["alice", "bob"], pool)
        try:
            self.proxy = Proxy(self.backend.url, root / "proxy",
                               f"pool_dir: {pool}\ndata_dir: data\npolicy: fill_first\nusage_poll_seconds: 0\n"
                               f"token_url: {self.backend.url}/oauth/token\nclient_keys: keys.json\nadmin_token: {ADMIN}\n")
        except BaseException:
            self.backend.stop()
            raise

    def turn(self, conversation: str, key: str | None = None) -> int:
        with redirecting_client(self.proxy) as c:  # follows the failover redirect, as Codex does
            return c.post(RESPONSES, json=turn_body(conversation), headers={
                "authorization": f"Bearer {key or self.key}", "session-id": conversation}).status_code

    def script(self) -> None:
        for conversation in ("one", "two", "one"):
            assert self.turn(conversation) == 200
        self.backend.fault(kind="unauthorized", account="alice")  # a refresh, then alice again
        assert self.turn("one") == 200
        self.backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)  # a failover to bob
        assert self.turn("two") == 200
        assert self.turn("three", key="cp-" + "x" * 43) == 403  # an unknown key: refused, counted

    def metrics_text(self) -> str:
        r = self.proxy.http.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        return r.text

    def stop(self) -> None:
        self.proxy.stop()
        self.backend.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("dashboards"))
    try:
        w.script()
        w.exposed = exposed_series(w.metrics_text())
        yield w
    finally:
        w.stop()


def exposed_series(text: str) -> dict[str, set[str]]:
    """Sample name (with its _total/_bucket/_sum/_count suffix) → the label names it carries."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


# --- PromQL, read well enough to name its metrics and labels ----------------------------------------

FUNCTIONS = {  # PromQL functions and aggregations
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
WORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
TOKEN = re.compile(r"\s*(?:(?P<sel>\{[^}]*\})|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)"
                   r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<op>==|!=|>=|<=|[-+*/%^(),<>]))")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def matchers(selector: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", selector))


def read_promql(expr: str) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """(metric → label names in its selectors, grouping labels, labels of bare `{…}` selectors)."""
    text = re.sub(r"\[[^\]]*\]", "", STRING.sub('""', expr))  # strings blanked, ranges (and $__rate_interval) dropped
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = TOKEN.match(text, pos)
        assert m and m.end() > pos, f"cannot read {text[pos:pos + 40]!r} in {expr!r}"
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    metrics: dict[str, set[str]] = {}
    grouping: set[str] = set()
    bare: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, tok = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "ident" and tok in LABEL_LISTS and following == ("op", "("):
            j = i + 2
            while tokens[j] != ("op", ")"):
                if tokens[j][0] == "ident":
                    grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and (following == ("op", "(") or following in (("ident", "by"), ("ident", "without"))):
            assert tok in FUNCTIONS, f"unknown PromQL function {tok!r} in {expr!r}"
        elif kind == "ident" and tok not in WORDS:
            labels = metrics.setdefault(tok, set())
            if following[0] == "sel":
                labels |= matchers(following[1])
                i += 1
        elif kind == "sel":
            bare |= matchers(tok)
        i += 1
    return metrics, grouping, bare


def check_promql(expr: str, exposed: dict[str, set[str]], legend: str = "") -> list[str]:
    """What in `expr` (and its legend's {{label}}s) is not in `exposed`; [] when all of it is."""
    metrics, grouping, bare = read_promql(expr)
    problems = [] if metrics else [f"no metric in {expr!r}"]
    known = {}
    for name, labels in metrics.items():
        if name not in exposed:
            problems.append(f"metric {name!r} is not exposed (in {expr!r})")
            continue
        known[name] = exposed[name] | TARGET_LABELS
        problems += [f"{name} has no label {lb!r} (in {expr!r})" for lb in sorted(labels - known[name] - {"__name__"})]
    anywhere = set().union(*known.values()) if known else set()
    problems += [f"no metric in {expr!r} has the label {lb!r}" for lb in sorted((grouping | bare) - anywhere - {"__name__"})]
    shown = set(re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", legend))
    problems += [f"legend {legend!r} names {lb!r}, which {expr!r} does not give"
                 for lb in sorted(shown - (grouping if grouping else anywhere))]
    return problems


def dashboard_targets(dashboard: dict) -> list[dict]:
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    return [t for p in walk(dashboard["panels"]) for t in p.get("targets", [])]


def variable_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(variable name, metric, label) of each label_values() template variable."""
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*", q)
            assert m, f"variable {v['name']}: not a label_values(metric, label) query: {q!r}"
            out.append((v["name"], m.group(1), m.group(2)))
    return out


def alert_rules(path: Path = ALERTS) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it with every variable at "All"."""
    return (expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
            .replace("$account", ".*").replace("$model", ".*").replace("$client", ".*"))


# --- (a) the dashboard loads, imports, and asks only for what the proxy exposes ---------------------

def test_dashboard_loads_with_its_import_inputs():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None  # importable: Grafana assigns its own id
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert {"account", "model"} <= variables.keys()
    targets = dashboard_targets(dashboard)
    assert len(targets) >= 20
    for t in targets:  # every query goes to the chosen Prometheus
        assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, t
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
    everything = json.dumps(dashboard)
    for wanted in ("codex_pool_requests_total", "codex_pool_tokens_total", "codex_pool_failovers_total",
                   "codex_pool_account_state", "codex_pool_accounts", "codex_pool_account_used_ratio",
                   "codex_pool_account_window_reset_timestamp_seconds", "codex_pool_upstream_ttfb_seconds_bucket",
                   "codex_pool_upstream_duration_seconds_bucket", "codex_pool_token_refreshes_total",
                   "codex_pool_client_refusals_total", "by (client)", "histogram_quantile(0.99"):
        assert wanted in everything, wanted


def test_dashboard_and_alerts_use_only_what_the_proxy_exposes(world):
    exposed = world.exposed
    dashboard = json.loads(DASHBOARD.read_text())
    problems = []
    for t in dashboard_targets(dashboard):
        problems += check_promql(t["expr"], exposed, t.get("legendFormat", ""))
    for name, metric, label in variable_queries(dashboard):
        if label not in exposed.get(metric, set()):
            problems.append(f"variable {name}: {metric} has no label {label!r}")
    for rule in alert_rules():
        problems += check_promql(rule["expr"], {**exposed, **SYNTHETIC})
        templated = " ".join(rule["annotations"].values())
        metrics, grouping, _ = read_promql(rule["expr"])
        gives = grouping or set().union(*(exposed.get(m, set()) | TARGET_LABELS for m in metrics))
        problems += [f"{rule['alert']}: annotations use $labels.{lb}, which its expr does not give"
                     for lb in sorted(set(re.findall(r"\$labels\.(\w+)", templated)) - gives)]
    assert not problems, "\n".join(problems)
    assert "up" not in exposed  # `up` is Prometheus's own, not the proxy's


def test_the_promql_reader_catches_a_misspelling(world):
    """The check above can fail: a misspelled metric, label, grouping or legend is reported."""
    exposed = world.exposed
    good = 'sum by (account) (rate(codex_pool_requests_total{model=~"$model"}[$__rate_interval]))'
    assert check_promql(good, exposed, "{{account}}") == []
    assert check_promql(good.replace("requests_total", "request_total"), exposed)
    assert check_promql(good.replace("model=~", "modle=~"), exposed)
    assert check_promql(good.replace("by (account)", "by (acount)"), exposed)
    assert check_promql(good, exposed, "{{model}}")  # summed away
    assert check_promql("histogram_quantile(0.9, sum by (le) (rate(codex_pool_upstream_ttfb_seconds[5m])))", exposed)
    assert check_promql('codex_pool_accounts{state="usable"} == 0', exposed) == []
    assert check_promql('up{job="codex-pool"} == 0', exposed)  # not exposed by the proxy


# --- (b) promtool checks the rules and unit-tests them --------------------------------------------

def test_promtool_checks_and_unit_tests_the_alert_rules(tmp_path):
    promtool = prometheus_bin().with_name("promtool")
    skip_without(promtool)
    done = subprocess.run([str(promtool), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {"CodexPoolProxyDown", "CodexPoolNoUsableAccount", "CodexPoolAccountNeedsRelogin",
                                           "CodexPoolFailoverRateHigh", "CodexPoolTokenRefreshFailing"}
    for r in rules:
        assert r["expr"] and r["for"] and r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    assert f'up{{job="{JOB}"}}' in next(r["expr"] for r in rules if r["alert"] == "CodexPoolProxyDown")
    # promtool compares annotations too: the unit tests run on a copy without them (their templates
    # were checked above)
    bare = yaml.safe_load(ALERTS.read_text())
    for g in bare["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(bare))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(alert_unit_tests()))
    done = subprocess.run([str(promtool), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def alert_unit_tests() -> dict:
    """When each alert fires (and when it does not), on synthetic series one minute apart."""
    t = {"job": JOB, "instance": "proxy:8989"}

    def series(name, values, **labels):
        body = ", ".join(f'{k}="{v}"' for k, v in {**t, **labels}.items())
        return {"series": f"{name}{{{body}}}", "values": values}

    def fires(alertname, at, *labelsets):
        return {"eval_time": at, "alertname": alertname, "exp_alerts": [{"exp_labels": {**t, **ls}} for ls in labelsets]}

    turn = {"kind": "sse_turn", "status_class": "2xx", "model": "gpt-5.1-codex", "client": "none"}
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("up", "1 1 0x20"),
                series("codex_pool_accounts", "2 1 0x20", state="usable"),
                series("codex_pool_account_state", "0 1x20", account="alice", state="disabled"),
                series("codex_pool_account_state", "0x20", account="bob", state="disabled"),
                series("codex_pool_account_state", "1x20", account="bob", state="usable"),
                # 2 failovers a minute for 10 turns a minute: 20 %; Codex's side requests do not dilute it
                series("codex_pool_failovers_total", "0+2x30", reason="usage_limit_reached"),
                series("codex_pool_requests_total", "0+10x30", account="alice", **turn),
                series("codex_pool_requests_total", "0+1000x30", account="alice", **{**turn, "kind": "other"}),
                # alice's refreshes fail; bob's fail too but also succeed
                series("codex_pool_token_refreshes_total", "0+1x30", account="alice", result="failed_transient"),
                series("codex_pool_token_refreshes_total", "0+1x30", account="bob", result="failed_transient"),
                series("codex_pool_token_refreshes_total", "0+1x30", account="bob", result="refreshed"),
                # carol's first refresh since the proxy started fails once: her series start at 0 (seeded)
                series("codex_pool_token_refreshes_total", "0 1x20", account="carol", result="failed_transient"),
                series("codex_pool_token_refreshes_total", "0x20", account="carol", result="refreshed"),
            ],
            "alert_rule_test": [
                fires("CodexPoolProxyDown", "3m"),  # down for 1 minute: not yet
                fires("CodexPoolProxyDown", "5m", {"severity": "critical"}),
                fires("CodexPoolNoUsableAccount", "1m"),
                fires("CodexPoolNoUsableAccount", "5m", {"severity": "critical", "state": "usable"}),
                fires("CodexPoolAccountNeedsRelogin", "4m"),
                fires("CodexPoolAccountNeedsRelogin", "7m", {"severity": "warning", "account": "alice", "state": "disabled"}),
                fires("CodexPoolFailoverRateHigh", "5m"),
                fires("CodexPoolFailoverRateHigh", "25m", {"severity": "warning"}),
                fires("CodexPoolTokenRefreshFailing", "2m"),
                fires("CodexPoolTokenRefreshFailing", "10m", {"severity": "warning", "account": "alice"},
                      {"severity": "warning", "account": "carol"}),
            ],
        }],
    }


# --- (c) a real Prometheus scrapes the proxy, loads the rules, answers the dashboard --------------

def test_a_real_prometheus_loads_the_rules_and_answers_the_dashboard(world, tmp_path):
    binary = prometheus_bin()
    skip_without(binary)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        f"    authorization:\n      credentials: {ADMIN}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{world.proxy.port}']\n"
    )
    prom = Proc([str(binary), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], ready=re.compile(r"Server is ready"), timeout=60)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as c:
            check_prometheus(c, world)
    finally:
        prom.stop()


def check_prometheus(c: httpx.Client, world: World) -> None:
    wanted = {g["name"]: len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"]}

    def rules_ok():
        groups = {g["name"]: g for g in c.get("/api/v1/rules").json()["data"]["groups"]}
        if set(groups) != set(wanted):
            return None
        for name, n in wanted.items():
            rules = groups[name]["rules"]
            assert all(r["health"] != "err" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            if len(rules) != n or not all(r["health"] == "ok" for r in rules):
                return None
        return groups

    wait_for(rules_ok, 30, "Prometheus to load and evaluate every rule group with health ok", interval=0.2)

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = sorted({grafana_to_promql(t["expr"]) for t in dashboard_targets(dashboard)})

    def answers():
        results = {}
        for expr in exprs:
            body = c.get("/api/v1/query", params={"query": expr}).json()
            assert body["status"] == "success", (expr, body)  # the real parser accepts it
            results[expr] = body["data"]["result"]
        return results if all(results.values()) else None  # rate() needs two scrapes

    results = wait_for(answers, 30, "every dashboard query to return data", interval=0.5)
    per_account = next(r for e, r in results.items() if e.startswith("sum by (account) (rate(codex_pool_requests_total"))
    assert {s["metric"]["account"] for s in per_account} == {"alice", "bob"}
    refusals = next(r for e, r in results.items() if "codex_pool_client_refusals_total" in e)
    assert {s["metric"]["reason"] for s in refusals} == {"unknown"}
    for name, metric, label in variable_queries(dashboard):  # Grafana's label_values() as Prometheus answers it
        values = c.get(f"/api/v1/label/{label}/values", params={"match[]": metric}).json()["data"]
        assert values, name
    assert set(c.get("/api/v1/label/client/values", params={"match[]": "codex_pool_requests_total"}).json()["data"]) == {"team"}

    # no account can serve: the rule sees it (pending: it fires after its `for`)
    world.backend.fault(kind="usage_limit", account="bob", resets_in_seconds=3600)
    world.turn("two")

    def pending():
        alerts = c.get("/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "CodexPoolNoUsableAccount"]

    alert = wait_for(pending, 30, "CodexPoolNoUsableAccount to become pending", interval=0.2)[0]
    assert alert["state"] in ("pending", "firing") and alert["labels"]["job"] == JOB
    assert "no account can serve" in alert["annotations"]["summary"]
    down = c.get("/api/v1/query", params={"query": f'up{{job="{JOB}"}}'}).json()["data"]["result"]
    assert [s["value"][1] for s in down] == ["1"]
