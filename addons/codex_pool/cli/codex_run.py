"""`scripts/codex [--config PATH] [--] ARGS…`: the installed Codex CLI through the running proxy,
with a private CODEX_HOME under data_dir (`data_dir/codex-home`), so `~/.codex` is never touched —
the way `codexlb run` works.

- wiring: native (https, WebSocket turns) when the proxy's CA exists (`data_dir/mitmproxy/`, made at
  the proxy's first start), else custom (plain http);
- settings: the user's own config.toml (`$CODEX_HOME`, else `~/.codex`) is copied with everything
  that does not concern the provider (model, reasoning effort, approvals, MCP servers, …); the
  provider settings are the proxy's (scripts/codex-setup's patch_config); re-written on every run,
  so edits to the user's file carry over;
- login: a placeholder auth.json (scripts/codex-setup's), carrying the client key from
  `CODEX_POOL_KEY` when the pool uses client keys;
- the binary: `CODEX_POOL_CODEX_BIN`, else what scripts/install-codex put in the cache, else `codex`
  on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from codex_pool.cli.codex_setup import patch_config
from codex_pool.cli.launcher import _installed_codex
from codex_pool.cli.project import load_settings, project_root
from codex_pool.core.client_keys import looks_like_key
from codex_pool.core.config import ConfigError
from codex_pool.storage.codex_home import is_placeholder, write_placeholder_auth


def proxy_origin(listen: str, native: bool) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"  # listening everywhere: this machine reaches it on loopback
    return f"{'https' if native else 'http'}://{host}:{port}"


def prepare(config, user_home: Path, key: str | None) -> tuple[Path, dict[str, str], str]:
    """The private home (config.toml and placeholder login written) and the environment to run in."""
    home = config.data_dir / "codex-home"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = config.confdir / "mitmproxy-ca-cert.pem"
    native = ca.exists()
    mode = "native" if native else "custom"
    origin = proxy_origin(config.listen, native)
    user_config = user_home / "config.toml"
    existing = user_config.read_text() if user_config.is_file() else ""
    (home / "config.toml").write_text(patch_config(existing, mode, origin, keyed=key is not None))
    auth = home / "auth.json"
    if not auth.exists() or (is_placeholder(auth) and key):
        write_placeholder_auth(auth, time.time(), replace=auth.exists(), key=key)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"CODEX_HOME": str(home), "CODEX_REFRESH_TOKEN_URL_OVERRIDE": f"{origin}/oauth/token"})
    if native:
        env["CODEX_CA_CERTIFICATE"] = str(ca)
    return home, env, mode


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if args[:1] == ["--config"] and len(args) >= 2:
        config_path, args = Path(args[1]), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    root = root or project_root()
    try:
        config = load_settings(config_path, root)
    except ConfigError as e:
        print(f"scripts/codex: {e}", file=sys.stderr)
        return 2
    key = os.environ.get("CODEX_POOL_KEY") or None
    if key is not None and not looks_like_key(key):
        print("scripts/codex: CODEX_POOL_KEY is not a codex-pool key (they start with cp-)", file=sys.stderr)
        return 2
    codex = os.environ.get("CODEX_POOL_CODEX_BIN") or _installed_codex() or shutil.which("codex")
    if not codex:
        print("scripts/codex: no Codex CLI found; run scripts/install-codex (or put codex on PATH)", file=sys.stderr)
        return 2
    user_home = Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex").expanduser()
    home, env, mode = prepare(config, user_home, key)
    print(f"scripts/codex: {mode} wiring through the proxy; private home {home} (your {user_home} is untouched)",
          file=sys.stderr)
    os.execvpe(codex, [codex, *args], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
