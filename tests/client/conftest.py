import os
import shutil
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


def run_codex(codex_bin: str, home: Path, workdir: Path, token_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [codex_bin, "exec", "--skip-git-repo-check", *args],
        cwd=workdir, env=codex_env(home, token_url), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


__all__ = ["run_codex", "shutil"]
