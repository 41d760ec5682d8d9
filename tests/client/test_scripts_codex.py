"""scripts/codex: the installed Codex CLI through the running proxy with a private CODEX_HOME under
data_dir, the user's own settings (not their provider) copied, and ~/.codex left untouched."""

import os
import shutil
import subprocess

import pytest

from tests.support.procs import ROOT
from tests.support.proxy_world import ProxyWorld

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.mark.parametrize("mode", ["custom", "native"])
def test_scripts_codex_exec_through_the_running_proxy(tmp_path, codex_bin, mode):
    world = ProxyWorld(tmp_path / "world", "usage_poll_seconds: 0\n")
    try:
        world.fresh(["alice"])
        cfg = world.proxy.config_path
        cfg.write_text(cfg.read_text() + f"listen: 127.0.0.1:{world.proxy.port}\n")  # scripts/codex finds the proxy here
        if mode == "native":  # the CA where scripts/run keeps it (data_dir/mitmproxy): the native wiring
            (world.data_dir / "mitmproxy").mkdir(parents=True, exist_ok=True)
            shutil.copy(world.proxy.workdir / "confdir" / "mitmproxy-ca-cert.pem", world.data_dir / "mitmproxy")
        user = tmp_path / "user"
        codex_home = user / ".codex"
        codex_home.mkdir(parents=True)
        own = ('model_reasoning_effort = "low"\nmodel_provider = "somewhere-else"\n\n'
               '[model_providers.somewhere-else]\nname = "x"\nbase_url = "http://127.0.0.1:9/v1"\n')
        (codex_home / "config.toml").write_text(own)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CODEX")}
        env.update(HOME=str(user), CODEX_POOL_CODEX_BIN=codex_bin, NO_COLOR="1", RUST_LOG="error",
                   CODEX_CA_CERTIFICATE="")
        work = tmp_path / "work"
        work.mkdir()
        done = subprocess.run([str(ROOT / "scripts" / "codex"), "--config", str(cfg), "exec", "--skip-git-repo-check",
                               "say hi"], cwd=work, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Answer from fake account" in done.stdout
        assert (codex_home / "config.toml").read_text() == own and sorted(os.listdir(codex_home)) == ["config.toml"]
        private = world.data_dir / "codex-home"
        text = (private / "config.toml").read_text()
        assert 'model_reasoning_effort = "low"' in text and f"127.0.0.1:{world.proxy.port}" in text
        turns = [r for r in world.backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
        assert turns and f"{mode} wiring through the proxy" in done.stderr
        if mode == "native":  # over https, turns on a WebSocket
            assert f"https://127.0.0.1:{world.proxy.port}" in text
            assert any(r.get("kind") == "ws-upgrade" for r in world.backend.requests())
    finally:
        world.stop()
