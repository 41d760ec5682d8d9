"""`scripts/codex-setup`: point a Codex CLI home at the proxy.

    scripts/codex-setup --mode custom|native [--home DIR] [--proxy URL] [--config mitm.yaml] [--key KEY] [--yes]

- custom: a custom provider over plain http (simplest; SSE turns).
- native: the built-in provider over https (WebSocket turns, zstd bodies, remote compaction);
  Codex must trust the proxy's CA: `export CODEX_CA_CERTIFICATE=<data_dir>/mitmproxy/mitmproxy-ca-cert.pem`.

A new home gets a config.toml and a placeholder auth.json whose tokens never expire (so Codex never
refreshes against the real auth server; the proxy replaces them on every request). With --key (a
shared pool with client keys), the key is that placeholder's access token, so Codex sends it on
every request, WebSocket included. An existing config.toml is patched: the diff is shown, and
applied (with a backup) only with --yes. An existing auth.json is left alone, unless it is a
placeholder and --key is given (its key is then replaced).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time
import tomllib
from pathlib import Path

from codex_pool.core.client_keys import looks_like_key
from codex_pool.storage.codex_home import is_placeholder, write_placeholder_auth
from codex_pool.cli.project import project_root
from codex_pool.core.config import ConfigError, default_config
from codex_pool.storage.config_file import load_config

PROVIDER = "codex-pool"
TOP_KEYS = ("model_provider", "chatgpt_base_url", "openai_base_url")


def top_settings(mode: str, proxy: str) -> dict[str, str]:
    proxy = proxy.rstrip("/")
    if mode == "custom":
        return {"model_provider": PROVIDER, "chatgpt_base_url": f"{proxy}/backend-api/"}
    return {"chatgpt_base_url": f"{proxy}/backend-api/", "openai_base_url": f"{proxy}/backend-api/codex"}


def provider_table(proxy: str) -> str:
    return (
        f"[model_providers.{PROVIDER}]\n"
        f'name = "{PROVIDER}"  # must not be "OpenAI"\n'
        f'base_url = "{proxy.rstrip("/")}/backend-api/codex"\n'
        'wire_api = "responses"\n'
        "requires_openai_auth = true\n"
    )


# With a client key, Codex's ChatGPT apps (its `codex_apps` MCP server) are turned off: Codex sends
# no credentials there when its base URL is not chatgpt.com, so a keyed pool refuses it and the TUI
# shows "MCP client for `codex_apps` failed to start" on every start; and the apps (connectors) a
# pool account has are its owner's, not the key holders'. `codex features list` names the flag.
APPS_OFF = "apps = false  # codex-pool: a shared pool's ChatGPT apps are its accounts' owners' (scripts/codex-setup --key)"


def patch_config(existing: str, mode: str, proxy: str, keyed: bool = False) -> str:
    """The config.toml text with our settings in place; everything else kept. `keyed` (a shared
    pool with client keys) also turns Codex's ChatGPT apps off (APPS_OFF); without it, only our
    own such line is taken out again."""
    lines = existing.splitlines()
    out: list[str] = []
    section: str | None = None
    skipping = False
    features_at: int | None = None  # where the user's [features] table starts in `out`
    for line in lines:
        header = re.match(r"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            section = header.group(1).strip()
            skipping = section == f"model_providers.{PROVIDER}" or section == f'model_providers."{PROVIDER}"'
            if skipping:
                continue
            if section == "features":
                features_at = len(out)
        if skipping:
            continue
        if section is None and (re.match(rf"^\s*({'|'.join(TOP_KEYS)})\s*=", line)
                                or line.startswith("# codex-pool (scripts/codex-setup")):
            continue  # replaced below
        if section == "features" and re.match(r"^\s*apps\s*=", line) and (keyed or line.strip() == APPS_OFF):
            continue  # ours, put back below when keyed
        out.append(line)
    if keyed and features_at is not None:
        out.insert(features_at + 1, APPS_OFF)
    while out and not out[-1].strip():
        out.pop()
    while out and not out[0].strip():
        out.pop(0)
    head = [f'{k} = "{v}"' for k, v in top_settings(mode, proxy).items()]
    text = "# codex-pool (scripts/codex-setup --mode " + mode + ")\n" + "\n".join(head) + "\n"
    rest = "\n".join(out)
    if rest.strip():
        text += "\n" + rest + "\n"
    if keyed and features_at is None:
        text += "\n[features]\n" + APPS_OFF + "\n"
    if mode == "custom":
        text += "\n" + provider_table(proxy)
    tomllib.loads(text)  # never write a file Codex can't read
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/codex-setup", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("custom", "native"), required=True)
    p.add_argument("--home", type=Path, default=None, help="the CODEX_HOME to write (default $CODEX_HOME or ~/.codex)")
    p.add_argument("--proxy", default=None, help="the proxy's origin (default from mitm.yaml: http(s)://<listen>)")
    p.add_argument("--config", type=Path, default=None, help="the proxy's settings (default: the project's mitm.yaml)")
    p.add_argument("--key", default=None, help="your client key for a shared pool (scripts/keys create NAME prints it)")
    p.add_argument("--yes", action="store_true", help="apply changes to an existing config.toml (a backup is kept)")
    args = p.parse_args(argv)
    cfg_path = args.config or project_root() / "mitm.yaml"
    try:
        config = load_config(cfg_path) if cfg_path.exists() else default_config(project_root())
    except ConfigError as e:
        print(f"scripts/codex-setup: {e}", file=sys.stderr)
        return 2
    scheme = "https" if args.mode == "native" else "http"
    proxy = args.proxy or f"{scheme}://{config.listen}"
    if args.mode == "native" and not proxy.startswith("https://"):
        print("scripts/codex-setup: native mode needs an https:// proxy origin (Codex refuses a plain-http workspace origin)",
              file=sys.stderr)
        return 2
    home = args.home or Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_toml = home / "config.toml"
    existing = config_toml.read_text() if config_toml.exists() else ""
    try:
        wanted = patch_config(existing, args.mode, proxy, keyed=args.key is not None)
    except tomllib.TOMLDecodeError as e:
        print(f"scripts/codex-setup: {config_toml} is not valid TOML ({e}); fix it first", file=sys.stderr)
        return 2
    if existing and existing != wanted:
        diff = difflib.unified_diff(existing.splitlines(True), wanted.splitlines(True), str(config_toml), str(config_toml) + " (new)")
        sys.stdout.writelines(diff)
        if not args.yes:
            print(f"\n{config_toml} exists: nothing changed. Re-run with --yes to apply the diff above (a backup is kept).")
            return 0
        backup = config_toml.with_name(f"config.toml.bak-{time.strftime('%Y%m%d%H%M%S')}")
        backup.write_text(existing)
        print(f"backup: {backup}")
    if existing != wanted:
        config_toml.write_text(wanted)
        print(f"wrote {config_toml}")
    else:
        print(f"{config_toml} already points at {proxy}")
    auth = home / "auth.json"
    if args.key is not None and not looks_like_key(args.key):
        print("scripts/codex-setup: --key: that is not a codex-pool key (they start with cp-; scripts/keys create NAME "
              "prints one)", file=sys.stderr)
        return 2
    if auth.exists() and not (args.key and is_placeholder(auth)):
        kept = " (not a placeholder: move it away to use --key)" if args.key else ""
        print(f"kept {auth} (the proxy replaces its credentials on every request){kept}")
    else:
        write_placeholder_auth(auth, time.time(), replace=auth.exists(), key=args.key)
        print(f"wrote {auth} (placeholder login; tokens never expire{'; carries your client key' if args.key else ''})")
    print("\nthen:")
    print(f"  export CODEX_HOME={home}")
    print(f"  export CODEX_REFRESH_TOKEN_URL_OVERRIDE={proxy.rstrip('/')}/oauth/token   # a refresh never leaves the proxy")
    if args.mode == "native":
        ca = config.confdir / "mitmproxy-ca-cert.pem"
        note = "" if ca.exists() else "   # created the first time the proxy starts (scripts/run)"
        print(f"  export CODEX_CA_CERTIFICATE={ca}{note}")
    print("  codex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
