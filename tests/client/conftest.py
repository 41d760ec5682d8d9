import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def codex_bin() -> str:
    """The real Codex CLI 0.169.0 (scripts/install-codex puts it in a cache outside the clone)."""
    found = os.environ.get("CODEX_POOL_CODEX_BIN")
    if not found:
        done = subprocess.run([str(ROOT / "scripts" / "install-codex")], capture_output=True, text=True, timeout=600)
        found = done.stdout.strip() if done.returncode == 0 else ""
        if not found:
            reason = f"the Codex CLI could not be installed: {done.stderr.strip()[-300:]}"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
    if not Path(found).exists() or not os.access(found, os.X_OK):
        pytest.skip(f"the Codex CLI binary {found} is missing or not executable")
    return found


def codex_env(home: Path, token_url: str) -> dict[str, str]:
    """A clean environment: its own CODEX_HOME and HOME, no proxies, refresh pointed at a counter."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CODEX")}
    env.update({"CODEX_HOME": str(home), "HOME": str(home.parent), "CODEX_REFRESH_TOKEN_URL_OVERRIDE": token_url,
                "NO_COLOR": "1", "RUST_LOG": "error"})
    return env


class CodexWorld:
    """The simulated backend (alice, bob), real mitmdump with our addon, and a Codex home written by
    scripts/codex-setup. `codex(...)` runs `codex exec`; a refresh by Codex itself would go to the
    backend's token endpoint, where tests can count it."""

    def __init__(self, tmp_path: Path, codex_bin: str, mode: str, settings: str):
        from codex_pool.cli import codex_setup

        from tests.support.procs import FakeBackend, Proxy

        self.tmp_path, self.codex_bin = tmp_path, codex_bin
        pool = tmp_path / "pool"
        pool.mkdir()
        self.backend = FakeBackend(["alice", "bob"], pool)
        self.proxy = Proxy(self.backend.url, tmp_path / "proxy",
                           f"pool_dir: {pool}\ndata_dir: data\ntoken_url: {self.backend.url}/oauth/token\n"
                           f"usage_poll_seconds: 0\n{settings}")
        self.home = tmp_path / "user" / "codex-home"
        origin = f"{'https' if mode == 'native' else 'http'}://127.0.0.1:{self.proxy.port}"
        assert codex_setup.main(["--mode", mode, "--home", str(self.home), "--proxy", origin,
                                 "--config", str(self.proxy.config_path)]) == 0
        self.ca = tmp_path / "proxy" / "confdir" / "mitmproxy-ca-cert.pem"

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

    def turns(self) -> list[dict]:
        return [r for r in self.backend.requests() if r["path"].startswith("/backend-api/codex/responses")]

    def client_refreshes(self) -> int:
        """Token-endpoint calls Codex itself made (the proxy's own refreshes go there too: tests that
        check this run without pool refreshes)."""
        state = self.backend.state()
        return state["token_calls_unknown"] + sum(a["token_calls"] for a in state["accounts"].values())

    def stop(self) -> None:
        self.proxy.stop()
        self.backend.stop()


@pytest.fixture
def codex_world(tmp_path, codex_bin):
    """Factory: codex_world(mode="custom"|"native", settings="policy: ...\n") → CodexWorld."""
    made = []

    def make(mode: str = "custom", settings: str = "") -> CodexWorld:
        world = CodexWorld(tmp_path, codex_bin, mode, settings)
        made.append(world)
        return world

    yield make
    for world in made:
        world.stop()
