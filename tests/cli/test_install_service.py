"""scripts/install-service as a user runs it (a subprocess, HOME pointed at a scratch folder so the
real ~/.config and ~/Library are never touched): the systemd unit passes `systemd-analyze verify`,
its ExecStart — run the way systemd runs it (its WorkingDirectory, its Environment=, systemd's
minimal PATH, nothing of ours) — starts the proxy in front of the simulated backend, and SIGTERM
stops it within TimeoutStopSec with the ledger and the serving state written; the launchd plist
is valid with the documented keys; --uninstall removes, --print writes nothing."""

from __future__ import annotations

import getpass
import os
import plistlib
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from codex_pool.storage.ledger_store import LedgerStore
from codex_pool.storage.state_file import StateFile

from tests.support.flows import CLIENT_TOKEN, CODEX_HEADERS, RESPONSES, turn_body
from tests.support.procs import ROOT, FakeBackend, Proc, free_port

SCRIPT = ROOT / "scripts" / "install-service"
# what systemd gives a service besides its own Environment= (systemd.exec(5), "Environment variables
# in spawned processes"): its default PATH, and HOME/USER/LOGNAME/SHELL for the user it runs as
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def install(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "INSTALL_SERVICE_REEXEC", "XDG_CONFIG_HOME", "SUDO_USER")}
    env["HOME"] = str(home)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _unescape(word: str) -> str:
    return word.replace("%%", "%").replace("$$", "$")


def exec_argv(line: str) -> list[str]:
    """ExecStart= as systemd splits it (the quoting the installer uses: double quotes, backslash
    escapes inside them, %% and $$ for literal % and $)."""
    return [_unescape(w) for w in shlex.split(line)]


def environment(values: list[str]) -> dict[str, str]:
    env = {}
    for item in values:
        for assignment in shlex.split(item):
            key, _, value = _unescape(assignment).partition("=")
            env[key] = value
    return env


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def project(tmp_path):
    """A settings file in a folder whose name needs quoting in a unit (a space and a %)."""
    folder = tmp_path / "my pool 100%"
    folder.mkdir()
    return folder


def unit_path(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / "codex-pool.service"


# ---- the unit ------------------------------------------------------------------------------------


def test_user_unit_is_written_into_home_with_the_documented_settings(home, project):
    (project / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\nlisten: 127.0.0.1:8999\n")
    done = install(home, "--config", str(project / "mitm.yaml"))
    assert done.returncode == 0, done.stderr
    path = unit_path(home)
    assert files_under(home) == [path]
    for command in ("systemctl --user daemon-reload && systemctl --user enable --now codex-pool",
                    "journalctl --user -u codex-pool -f", "loginctl enable-linger $USER"):
        assert command in done.stdout
    text = path.read_text()
    v = unit_values(text)
    assert exec_argv(v["ExecStart"][0]) == [str(ROOT / "scripts" / "run"), "--config", str(project / "mitm.yaml")]
    assert v["WorkingDirectory"] == [str(ROOT)]
    assert v["Restart"] == ["on-failure"] and v["RestartSec"] == ["5"]
    assert v["KillSignal"] == ["SIGTERM"] and int(v["TimeoutStopSec"][0]) >= 10
    assert v["StandardOutput"] == ["journal"] and v["StandardError"] == ["journal"]
    assert v["Documentation"] == [f"file://{ROOT / 'README.md'}"] and "127.0.0.1:8999" in v["Description"][0]
    assert v["WantedBy"] == ["default.target"] and "User" not in v
    assert set(environment(v["Environment"])) <= {"PYTHON", "PYTHONUNBUFFERED"}
    # --user is the default, spelled out
    again = install(home, "--user", "--config", str(project / "mitm.yaml"))
    assert again.returncode == 0 and path.read_text() == text


def test_the_unit_passes_systemd_analyze_verify(home, project, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze not found: install Debian's `systemd` package (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    (project / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    assert install(home, "--config", str(project / "mitm.yaml")).returncode == 0
    runtime = tmp_path / "runtime"  # a user manager wants XDG_RUNTIME_DIR, even to verify
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    checks = [[analyze, "--user", "verify", str(unit_path(home))]]
    system_dir = tmp_path / "system"  # the --system unit, printed and verified by the system manager's rules
    system_dir.mkdir()
    printed = install(home, "--system", "--print", "--config", str(project / "mitm.yaml"))
    assert printed.returncode == 0, printed.stderr
    (system_dir / "codex-pool.service").write_text(printed.stdout)
    checks.append([analyze, "verify", str(system_dir / "codex-pool.service")])
    for argv in checks:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
        print(" ".join(argv), "→", r.returncode, (r.stdout + r.stderr).strip() or "(no output)")
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # the verifier does look: a unit whose ExecStart is missing fails it
    bad = system_dir / "broken.service"
    bad.write_text(printed.stdout.replace(str(ROOT / "scripts" / "run"), str(tmp_path / "no-such-run")))
    r = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode != 0 and "no-such-run" in r.stderr


def test_system_unit_runs_as_the_invoking_user(home, project):
    (project / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    done = install(home, "--system", "--print", "--config", str(project / "mitm.yaml"))
    assert done.returncode == 0, done.stderr
    v = unit_values(done.stdout)
    assert v["User"] == [getpass.getuser()]
    assert v["WantedBy"] == ["multi-user.target"] and v["After"] == ["network-online.target"]
    assert files_under(home) == []


def test_print_writes_nothing_and_uninstall_removes_the_unit_and_its_enable_link(home, project):
    (project / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    printed = install(home, "--print", "--config", str(project / "mitm.yaml"))
    assert printed.returncode == 0 and "[Service]" in printed.stdout
    assert files_under(home) == [] and not (home / ".config").exists()
    plist = install(home, "--launchd", "--print", "--config", str(project / "mitm.yaml"))
    assert plistlib.loads(plist.stdout.encode())["Label"] == "com.codex-pool.proxy"
    assert files_under(home) == [] and not (project / "data").exists()

    assert install(home, "--config", str(project / "mitm.yaml")).returncode == 0
    path = unit_path(home)
    wants = path.parent / "default.target.wants"  # what `systemctl --user enable` leaves
    wants.mkdir()
    (wants / path.name).symlink_to(path)
    assert install(home, "--uninstall", "--print").returncode == 0 and path.exists()  # --print: nothing removed
    done = install(home, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not path.exists() and not (wants / path.name).is_symlink()
    assert "systemctl --user stop codex-pool" in done.stdout
    again = install(home, "--uninstall")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_a_missing_or_bad_config_is_refused(home, project):
    missing = install(home, "--config", str(project / "nope.yaml"))
    assert missing.returncode == 2 and "no such settings file" in missing.stderr
    (project / "bad.yaml").write_text("policy: sometimes\n")
    bad = install(home, "--config", str(project / "bad.yaml"))
    assert bad.returncode == 2 and "policy" in bad.stderr
    assert files_under(home) == []


# ---- the launchd agent ---------------------------------------------------------------------------


def test_launchd_plist_is_valid_with_the_documented_keys(home, project):
    (project / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: state\n")
    done = install(home, "--launchd", "--config", str(project / "mitm.yaml"))
    assert done.returncode == 0, done.stderr
    path = home / "Library" / "LaunchAgents" / "com.codex-pool.proxy.plist"
    assert files_under(home) == [path]
    raw = path.read_bytes()
    assert raw.startswith(b"<?xml") and b"<!DOCTYPE plist" in raw
    doc = plistlib.loads(raw, fmt=plistlib.FMT_XML)
    assert doc["Label"] == "com.codex-pool.proxy"
    assert doc["ProgramArguments"] == [str(ROOT / "scripts" / "run"), "--config", str(project / "mitm.yaml")]
    assert doc["WorkingDirectory"] == str(ROOT)
    assert doc["RunAtLoad"] is True and doc["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(doc["ExitTimeOut"], int) and doc["ExitTimeOut"] >= 10
    logs = project / "state" / "logs"
    assert Path(doc["StandardOutPath"]).parent == logs and Path(doc["StandardErrorPath"]).parent == logs
    assert logs.is_dir()  # launchd opens the files, it does not make their folder
    assert set(doc["EnvironmentVariables"]) <= {"PYTHON", "PYTHONUNBUFFERED"}
    assert f"launchctl bootstrap gui/$(id -u) {path}" in done.stdout
    gone = install(home, "--launchd", "--uninstall")
    assert gone.returncode == 0 and not path.exists() and "launchctl bootout" in gone.stdout


# ---- the unit's command line, run as systemd would ------------------------------------------------


def ledger_records(data: Path) -> list[dict]:
    return list(LedgerStore(data / "ledger").query(None, None))


@pytest.mark.e2e
def test_exec_start_starts_the_proxy_and_sigterm_stops_it_with_ledger_and_state_flushed(home, project):
    pool, data = project / "pool", project / "data"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    service = None
    try:
        port = free_port()
        (project / "mitm.yaml").write_text(
            f"pool_dir: pool\ndata_dir: data\nlisten: 127.0.0.1:{port}\nupstream: {backend.url}\n"
            f"token_url: {backend.url}/oauth/token\nusage_poll_seconds: 0\n"
            "ledger_flush_seconds: 60\n"  # nothing reaches the ledger's files before the shutdown flush
        )
        assert install(home, "--config", str(project / "mitm.yaml")).returncode == 0
        v = unit_values(unit_path(home).read_text())
        argv, cwd = exec_argv(v["ExecStart"][0]), v["WorkingDirectory"][0]
        stop_timeout = float(v["TimeoutStopSec"][0])
        assert Path(argv[0]) == ROOT / "scripts" / "run" and os.access(argv[0], os.X_OK)
        env = {"PATH": SYSTEMD_PATH, "HOME": str(home), "USER": getpass.getuser(), "LOGNAME": getpass.getuser(),
               "SHELL": "/bin/sh", **environment(v.get("Environment", []))}
        # generous: scripts/run (re)installs .venv first when pyproject.toml changed since the last install
        service = Proc(argv, re.compile(rf"listening at 127\.0\.0\.1:{port}"), env=env, cwd=Path(cwd), timeout=300)
        # scripts/run → .venv/bin/python → mitmdump are execs: systemd's main PID is mitmdump itself,
        # so KillSignal reaches mitmproxy's own SIGTERM handler, not a wrapper
        cmdline = Path(f"/proc/{service.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"mitmdump") for part in cmdline), cmdline

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as c:
            assert c.get("/healthz").status_code == 200
            r = c.post(RESPONSES, json=turn_body("service-conv"),
                       headers={"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "service-conv", **CODEX_HEADERS})
            assert r.status_code == 200 and "response.completed" in r.text, r.text[:500]
        assert ledger_records(data) == []  # still queued in the proxy
        (data / "state.json").unlink(missing_ok=True)  # whatever is there after the stop, the stop wrote

        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(stop_timeout)
        took = time.monotonic() - started
        print(f"SIGTERM → exit {code} after {took:.2f} s (TimeoutStopSec={stop_timeout:g})")
        assert code in (0, 143), service.output()
        records = ledger_records(data)
        assert len(records) == 1 and records[0]["account"] in ("alice", "bob"), records
        doc, warning = StateFile(data / "state.json").load()
        assert warning is None and doc is not None and doc["sticky"], doc
        assert (data / "events.jsonl").stat().st_size > 0
        assert "Traceback" not in service.output(), service.output()
    finally:
        if service is not None:
            service.stop()
        backend.stop()
