"""The real Codex CLI against real mitmdump + our addon in front of the simulated backend: a Codex
home written by scripts/codex-setup, and `codex exec` run in a clean environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.proxy_world import ProxyWorld


def codex_env(home: Path, token_url: str) -> dict[str, str]:
    """A clean environment: its own CODEX_HOME and HOME, no proxies, refresh pointed at a counter."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CODEX")}
    env.update({"CODEX_HOME": str(home), "HOME": str(home.parent), "CODEX_REFRESH_TOKEN_URL_OVERRIDE": token_url,
                "NO_COLOR": "1", "RUST_LOG": "error"})
    return env


class CodexWorld:
    """The simulated backend, real mitmdump with our addon (a ProxyWorld), and a Codex home written
    by scripts/codex-setup. `fresh()` gives a test new accounts alice and bob (real names prefixed,
    see tests.support.proxy_world; `accounts` maps them), so one world can serve a whole module.
    `codex(...)` runs `codex exec`; a refresh by Codex itself would go to the backend's token
    endpoint, where tests can count it."""

    def __init__(self, tmp_path: Path, codex_bin: str, mode: str, settings: str):
        from codex_pool.cli import codex_setup

        self.tmp_path, self.codex_bin = tmp_path, codex_bin
        polling = "" if "usage_poll_seconds" in settings else "usage_poll_seconds: 0\n"
        self.world = ProxyWorld(tmp_path, f"{polling}{settings}")
        self.backend, self.proxy, self.pool_dir = self.world.backend, self.world.proxy, self.world.pool_dir
        self.home = tmp_path / "user" / "codex-home"
        origin = f"{'https' if mode == 'native' else 'http'}://127.0.0.1:{self.proxy.port}"
        try:
            assert codex_setup.main(["--mode", mode, "--home", str(self.home), "--proxy", origin,
                                     "--config", str(self.proxy.config_path)]) == 0
        except BaseException:
            self.world.stop()
            raise
        self.ca = tmp_path / "proxy" / "confdir" / "mitmproxy-ca-cert.pem"
        self.accounts = None
        self._unknown_token_calls = 0

    def fresh(self):
        """New accounts alice and bob for the next test (the backend's faults and settings reset)."""
        self.accounts = self.world.fresh(["alice", "bob"])
        self._unknown_token_calls = self.backend.state()["token_calls_unknown"]
        return self.accounts

    def answer_from(self, name: str) -> str:
        """The simulated backend's reply text when `name` (alice, bob) served the turn."""
        return f"Answer from fake account {self.accounts[name]}."

    def codex(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        env = codex_env(self.home, f"{self.backend.url}/oauth/token")
        env["CODEX_CA_CERTIFICATE"] = str(self.ca)
        work = self.tmp_path / "work"
        work.mkdir(exist_ok=True)
        done = subprocess.run([self.codex_bin, "exec", "--skip-git-repo-check", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if ok:
            assert done.returncode == 0, (f"codex failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
                                          f"\n--- proxy:\n{self.proxy.output()[-3000:]}")
        return done

    def requests(self) -> list[dict]:
        """The backend's request log, accounts by short name (alice, bob)."""
        return [{**r, "account": self.accounts.short(r["account"])} for r in self.backend.requests()]

    def turns(self) -> list[dict]:
        return [r for r in self.requests() if r["path"].startswith("/backend-api/codex/responses")]

    def unknown_token_calls(self) -> int:
        """Token-endpoint calls since `fresh()` with a refresh token the backend never issued (Codex's
        own placeholder, say)."""
        return self.backend.state()["token_calls_unknown"] - self._unknown_token_calls

    def client_refreshes(self) -> int:
        """Token-endpoint calls Codex itself made since `fresh()` (the proxy's own refreshes go there
        too: tests that check this run without pool refreshes)."""
        return self.unknown_token_calls() + sum(a["token_calls"] for a in self.accounts.sent().values())

    def stop(self) -> None:
        self.world.stop()


def shared_codex_world(tmp_path_factory, codex_bin, mode: str, settings: str):
    """For a module-scoped fixture: one CodexWorld for the module's tests, each calling `fresh()`."""
    world = CodexWorld(tmp_path_factory.mktemp(f"codex-{mode}"), codex_bin, mode, settings)
    yield world
    world.stop()
