import os
import subprocess
from pathlib import Path

import pytest

from tests.support.codex_world import CodexWorld

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


@pytest.fixture
def codex_world(tmp_path, codex_bin):
    """Factory: codex_world(mode="custom"|"native", settings="policy: ...\n") → a CodexWorld of
    this test's own, with fresh accounts alice and bob."""
    made = []

    def make(mode: str = "custom", settings: str = "") -> CodexWorld:
        world = CodexWorld(tmp_path, codex_bin, mode, settings)
        made.append(world)
        world.fresh()
        return world

    yield make
    for world in made:
        world.stop()
