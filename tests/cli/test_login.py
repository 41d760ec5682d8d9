"""scripts/login as a user runs it (a subprocess, re-executing itself into .venv).

End to end: the real Codex CLI 0.169.0 signs in with its device-code flow against a small OAuth
issuer run by this test (`--issuer` → Codex's hidden `--experimental_issuer`). The simulated backend
(scripts/fake_chatgpt) has no device-code endpoints and no authorization_code grant, so the issuer
here answers those and mints each login's tokens from the backend (`POST /_fake/accounts/<name>/login`),
so the imported account is one the backend serves and refreshes. Codex 0.169.0's browser flow ignores
the issuer override (it always goes to https://auth.openai.com), so it is not tested end to end.

The rest (which flow is chosen, exit codes, refusals, clean-up) runs against a tiny stand-in `codex`
that writes a prepared auth.json into $CODEX_HOME.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.procs import FakeBackend
from tests.support.tokens import make_auth

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "login"
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
CODEX_GLOB = os.path.expanduser(
    "~/.cache/codex-pool/codex-0.169.0/node_modules/@openai/codex-linux-x64/vendor/*/bin/codex")
HOME_LINE = re.compile(r"throw-away CODEX_HOME (\S+)")


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _env(**extra: str) -> dict[str, str]:
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "LOGIN_REEXEC", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER",
            "SSH_CONNECTION", "SSH_TTY", "CODEX_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


@pytest.fixture
def project(tmp_path):
    (tmp_path / "mitm.yaml").write_text("data_dir: data\npool_dir: pool\n")
    return tmp_path


def run(project, *args, env=None, timeout=120):
    argv = [str(SCRIPT), *args, "--config", str(project / "mitm.yaml")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=project,
                          env=env or _env(HOME=str(project)), stdin=subprocess.DEVNULL, check=False)


def throwaway_home(r) -> Path:
    m = HOME_LINE.search(r.stderr)
    assert m, r.stderr
    return Path(m.group(1))


def assert_pool_file(project, name: str) -> dict:
    path = project / "pool" / f"{name}.json"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- the real Codex CLI


class Issuer:
    """An OAuth issuer answering what `codex login --device-auth --experimental_issuer URL` asks:
    POST /api/accounts/deviceauth/usercode, POST /api/accounts/deviceauth/token (403 while pending,
    then the authorization code with its PKCE pair), POST /oauth/token (authorization_code grant,
    code_verifier checked against the S256 challenge). Tokens come from the simulated backend."""

    def __init__(self, backend: FakeBackend, account: str, *, pending_polls: int = 1, refuse_exchange: bool = False):
        self.backend, self.account = backend, account
        self.pending_polls, self.refuse_exchange = pending_polls, refuse_exchange
        self.log: list[tuple[str, str, dict]] = []
        self.codes: dict[str, str] = {}  # authorization code -> code_challenge
        self.issued: dict | None = None
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                ctype = self.headers.get("content-type", "")
                body = json.loads(raw) if "json" in ctype else dict(urllib.parse.parse_qsl(raw))
                issuer.log.append(("POST", self.path, body))
                self._answer(*issuer.answer(self.path, body))

            def do_GET(self):
                issuer.log.append(("GET", self.path, {}))
                self._answer(404, {"error": "not_found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path == "/api/accounts/deviceauth/usercode":
            if body.get("client_id") != CODEX_CLIENT_ID:
                return 400, {"error": "invalid_client"}
            return 200, {"device_auth_id": "dev-auth-1", "user_code": "TEST-CODE", "interval": "1"}
        if path == "/api/accounts/deviceauth/token":
            if body != {"device_auth_id": "dev-auth-1", "user_code": "TEST-CODE"}:
                return 400, {"error": "invalid_request"}
            if self.pending_polls > 0:
                self.pending_polls -= 1
                return 403, {"error": "authorization_pending"}
            verifier = secrets.token_urlsafe(32)
            code = secrets.token_urlsafe(12)
            self.codes[code] = _s256(verifier)
            return 200, {"authorization_code": code, "code_challenge": _s256(verifier), "code_verifier": verifier}
        if path == "/oauth/token":
            challenge = self.codes.pop(body.get("code", ""), None)
            if (self.refuse_exchange or body.get("grant_type") != "authorization_code" or challenge is None
                    or _s256(body.get("code_verifier", "")) != challenge or body.get("client_id") != CODEX_CLIENT_ID
                    or body.get("redirect_uri") != f"{self.url}/deviceauth/callback"):
                return 400, {"error": "invalid_grant", "error_description": "bad authorization code"}
            auth = self.backend.control("POST", f"accounts/{self.account}/login", {})
            self.issued = auth["tokens"]
            t = auth["tokens"]
            return 200, {"id_token": t["id_token"], "access_token": t["access_token"],
                         "refresh_token": t["refresh_token"], "token_type": "Bearer", "expires_in": 3600}
        return 404, {"error": "not_found"}

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.log]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _codex_binary() -> str:
    found = sorted(glob.glob(CODEX_GLOB))
    if not found:
        pytest.skip("the Codex CLI 0.169.0 is not installed (scripts/install-codex)")
    return found[0]


@pytest.fixture
def backend(tmp_path):
    fake = FakeBackend(["alice"], tmp_path / "fake-pool")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def issuer_for(backend):
    made: list[Issuer] = []

    def make(**kw) -> Issuer:
        made.append(Issuer(backend, "alice", **kw))
        return made[-1]

    yield make
    for issuer in made:
        issuer.close()


@pytest.mark.client
def test_real_codex_device_login_lands_in_the_pool(project, backend, issuer_for):
    codex = _codex_binary()
    issuer = issuer_for(pending_polls=1)
    r = run(project, "alice", "--issuer", issuer.url, "--codex", codex)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device-code sign-in (--issuer" in r.stderr
    # Codex showed the code and the URL under the issuer, polled through one pending answer, then
    # exchanged the code with its verifier (checked by the issuer) for the backend's tokens
    assert "TEST-CODE" in r.stdout and f"{issuer.url}/codex/device" in r.stdout
    assert issuer.paths() == ["/api/accounts/deviceauth/usercode", "/api/accounts/deviceauth/token",
                              "/api/accounts/deviceauth/token", "/oauth/token"]
    doc = assert_pool_file(project, "alice")
    alice = backend.state()["accounts"]["alice"]
    assert doc["auth_mode"] == "chatgpt"
    assert doc["tokens"]["account_id"] == alice["account_id"]
    assert doc["tokens"]["refresh_token"] == issuer.issued["refresh_token"]
    assert doc["tokens"]["access_token"] == issuer.issued["access_token"]
    assert re.search(r"imported alice\.json: \S+@\S+, plan plus, access token expires \d{4}-\d\d-\d\d", r.stdout)
    assert not throwaway_home(r).exists()
    # the imported login is one the simulated backend honours: its refresh token rotates there
    refreshed = httpx.post(f"{backend.url}/oauth/token", timeout=10, trust_env=False, json={
        "client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": doc["tokens"]["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != doc["tokens"]["refresh_token"]


@pytest.mark.client
def test_real_codex_refused_exchange_imports_nothing(project, backend, issuer_for):
    codex = _codex_binary()
    issuer = issuer_for(pending_polls=0, refuse_exchange=True)
    r = run(project, "alice", "--issuer", issuer.url, "--codex", codex)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "`codex login` failed (exit 1); nothing imported" in r.stderr
    assert issuer.paths()[-1] == "/oauth/token"
    assert not (project / "pool" / "alice.json").exists()
    assert not throwaway_home(r).exists()


# --------------------------------------------------------------------------- a stand-in codex

STAND_IN = """#!/bin/sh
# records how it was run, then writes the prepared auth.json (if any) and exits with $STAND_IN_EXIT
printf '%s\\n' "$CODEX_HOME" > "$STAND_IN_DIR/home"
printf '%s\\n' "$@" > "$STAND_IN_DIR/argv"
stat -c %a "$CODEX_HOME" > "$STAND_IN_DIR/mode"
if [ -f "$STAND_IN_DIR/auth.json" ]; then cp "$STAND_IN_DIR/auth.json" "$CODEX_HOME/auth.json"; fi
echo "stand-in codex login"
exit "${STAND_IN_EXIT:-0}"
"""


@pytest.fixture
def stand_in(tmp_path):
    d = tmp_path / "stand-in"
    d.mkdir()
    codex = d / "codex"
    codex.write_text(STAND_IN)
    codex.chmod(0o755)

    class StandIn:
        dir = d
        path = str(codex)

        def auth(self, doc: dict | None) -> None:
            (d / "auth.json").unlink(missing_ok=True)
            if doc is not None:
                (d / "auth.json").write_text(json.dumps(doc))

        def argv(self) -> list[str]:
            return (d / "argv").read_text().splitlines()

        def home(self) -> Path:
            return Path((d / "home").read_text().strip())

        def env(self, exit_code: int = 0, **extra: str) -> dict[str, str]:
            return _env(HOME=str(tmp_path), STAND_IN_DIR=str(d), STAND_IN_EXIT=str(exit_code), **extra)

    s = StandIn()
    s.auth(make_auth(account_id="acct-alice", email="alice@example.com", plan="pro"))
    return s


def test_success_imports_0600_and_removes_the_home(project, stand_in):
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 0, r.stderr
    assert "stand-in codex login" in r.stdout  # the terminal is Codex's (not captured by scripts/login)
    doc = assert_pool_file(project, "alice")
    assert doc["tokens"]["account_id"] == "acct-alice"
    assert re.search(r"imported alice\.json: alice@example\.com, plan pro, access token expires \d{4}-", r.stdout)
    home = stand_in.home()
    assert throwaway_home(r) == home
    assert (stand_in.dir / "mode").read_text().strip() == "700"
    assert not home.exists()
    assert os.environ.get("CODEX_HOME") != str(home)


def test_no_browser_means_device_auth_and_says_why(project, stand_in):
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 0, r.stderr
    assert stand_in.argv() == ["login", "-c", 'cli_auth_credentials_store="file"', "--device-auth"]
    assert "because no DISPLAY, WAYLAND_DISPLAY or BROWSER is set" in r.stderr


def test_browser_login_when_a_display_exists(project, stand_in):
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env(DISPLAY=":0"))
    assert r.returncode == 0, r.stderr
    assert "--device-auth" not in stand_in.argv()
    assert "browser sign-in" in r.stderr


def test_device_auth_when_asked(project, stand_in):
    r = run(project, "alice", "--device-auth", "--codex", stand_in.path, env=stand_in.env(DISPLAY=":0"))
    assert r.returncode == 0, r.stderr
    assert "--device-auth" in stand_in.argv()
    assert "as asked" in r.stderr


def test_issuer_is_passed_as_experimental_issuer(project, stand_in):
    r = run(project, "alice", "--issuer", "http://127.0.0.1:9", "--codex", stand_in.path, env=stand_in.env(DISPLAY=":0"))
    assert r.returncode == 0, r.stderr
    assert stand_in.argv()[-3:] == ["--device-auth", "--experimental_issuer", "http://127.0.0.1:9"]


def test_failed_login_imports_nothing_and_removes_the_home(project, stand_in):
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env(exit_code=1))
    assert r.returncode == 1
    assert "`codex login` failed (exit 1); nothing imported" in r.stderr
    assert not (project / "pool" / "alice.json").exists()
    assert not stand_in.home().exists()


def test_other_exit_status_is_passed_on(project, stand_in):
    stand_in.auth(None)
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env(exit_code=7))
    assert r.returncode == 7
    assert not stand_in.home().exists()


def test_login_without_auth_json_is_refused(project, stand_in):
    stand_in.auth(None)
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 2
    assert "wrote no auth.json" in r.stderr
    assert not (project / "pool").exists() or not any((project / "pool").iterdir())
    assert not stand_in.home().exists()


def test_account_already_in_the_pool_is_refused_then_replaced(project, stand_in):
    assert run(project, "alice", "--codex", stand_in.path, env=stand_in.env()).returncode == 0
    r = run(project, "alice2", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 2
    assert "already in the pool as alice.json" in r.stderr and "--replace" in r.stderr
    assert not (project / "pool" / "alice2.json").exists()
    assert not stand_in.home().exists()
    r = run(project, "alice2", "--replace", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 0, r.stderr
    assert_pool_file(project, "alice2")
    assert not (project / "pool" / "alice.json").exists()
    assert len(list((project / "pool" / ".removed").glob("alice-*.json"))) == 1
    assert "is now" in r.stdout and "refresh token is not used again" in r.stdout


def test_invalid_login_file_is_refused(project, stand_in):
    doc = make_auth()
    del doc["tokens"]["id_token"]
    stand_in.auth(doc)
    r = run(project, "alice", "--codex", stand_in.path, env=stand_in.env())
    assert r.returncode == 2, r.stderr
    assert not (project / "pool" / "alice.json").exists()
    assert not stand_in.home().exists()


@pytest.mark.parametrize("args,message", [
    (["bad/name"], "is not an account name"),
    (["alice", "--codex", "/nonexistent/codex"], "not an executable file"),
])
def test_bad_arguments_exit_2_without_running_codex(project, stand_in, args, message):
    r = run(project, *args, env=stand_in.env())
    assert r.returncode == 2
    assert message in r.stderr
    assert not (stand_in.dir / "argv").exists()


def test_bad_config_exits_2(project, stand_in):
    argv = [str(SCRIPT), "alice", "--codex", stand_in.path, "--config", str(project / "missing.yaml")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=project, env=stand_in.env(),
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2
    assert "missing.yaml" in r.stderr
    assert not (stand_in.dir / "argv").exists()


def test_started_by_a_python_without_the_project(project, stand_in):
    """The script re-executes itself with .venv/bin/python (like scripts/import-account)."""
    base = getattr(sys, "_base_executable", None) or "/usr/bin/python3"
    argv = [base, str(SCRIPT), "alice", "--codex", stand_in.path, "--config", str(project / "mitm.yaml")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=project, env=stand_in.env(),
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stderr
    assert_pool_file(project, "alice")
