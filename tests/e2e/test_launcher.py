"""scripts/run: the demo end to end, and the command line it builds."""

import re
import signal
import subprocess
from pathlib import Path

import pytest

from codex_pool.core.config import parse_config
from codex_pool.cli.launcher import mitm_command
from tests.support.procs import ROOT, Proc, free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def test_mitm_command_from_config(tmp_path):
    config = parse_config({"listen": "127.0.0.1:9999", "upstream": "https://chatgpt.com"}, tmp_path)
    argv = mitm_command(config, tmp_path / "mitm.yaml", web=False, extra=["-w", "x"])
    assert argv[1:] == [
        "-s", str(ROOT / "addons" / "pool.py"),
        "--mode", "reverse:https://chatgpt.com@127.0.0.1:9999",
        "--set", "connection_strategy=lazy",
        "--set", f"confdir={tmp_path / 'data' / 'mitmproxy'}",
        "--set", f"pool_config={tmp_path / 'mitm.yaml'}",
        "-w", "x",
    ]
    web = mitm_command(config, None, web=True)
    assert web[0].endswith("mitmweb") and "web_host=127.0.0.1" in web


def test_run_rejects_a_bad_config_with_the_key_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("policy: sometimes\n")
    done = subprocess.run([str(ROOT / "scripts" / "run"), "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "policy: 'sometimes' is not a policy" in done.stderr


def test_demo_shows_stickiness_and_spreading_then_stops_cleanly(tmp_path):
    port = free_port()
    cfg = tmp_path / "mitm.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nlisten: 127.0.0.1:{port}\npolicy: usage_balanced\n")
    demo = Proc([str(ROOT / "scripts" / "run"), "--demo", "--config", str(cfg)], re.compile(r"demo: accounts: curl"),
                timeout=120)
    try:
        served: dict[str, set] = {}
        tour = [m.group(1, 2) for m in (re.search(r"demo:\s+(demo-conversation-\d) → (\w+) ", l) for l in demo.lines) if m]
        assert len(tour) == 5, demo.output()
        for conv, account in tour:
            served.setdefault(conv, set()).add(account)
        assert all(len(v) == 1 for v in served.values())  # sticky
        assert len({next(iter(v)) for v in served.values()}) == 3  # spread over the three sample accounts
        assert "from the prompt cache" in demo.output()
        home = tmp_path / "data" / "demo" / "codex-home"
        assert f'base_url = "http://127.0.0.1:{port}/backend-api/codex"' in (home / "config.toml").read_text()
        assert oct((home / "auth.json").stat().st_mode & 0o777) == "0o600"
        pool_files = sorted((tmp_path / "data" / "demo" / "pool").glob("*.json"))
        assert [f.stem for f in pool_files] == ["alice", "bob", "carol"]
        for f in pool_files:
            assert oct(f.stat().st_mode & 0o777) == "0o600"
        # #11.3: the demo's usage, state and events stay in its own folder, never in the user's data
        assert wait_for(lambda: list((tmp_path / "data" / "demo" / "data").glob("ledger/*")), 10, "the demo's ledger")
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["demo"]
    finally:
        children = subprocess.run(["pgrep", "-P", str(demo.proc.pid)], capture_output=True, text=True).stdout.split()
        demo.proc.send_signal(signal.SIGTERM)
        demo.proc.wait(20)
    assert children, "the demo started no processes"
    wait_for(lambda: not [c for c in children if Path(f"/proc/{c}").exists()], 10, "the demo's processes to exit")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["demo"]  # not even at shutdown
