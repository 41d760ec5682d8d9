"""`scripts/login`: sign a ChatGPT account in with the real Codex CLI and put it straight into the
pool, so nobody's own ~/.codex is touched and no auth.json is copied by hand.

    scripts/login NAME [--device-auth] [--config PATH] [--replace] [--codex PATH] [--issuer URL]

Runs `codex login` (the binary scripts/install-codex prints, unless --codex) with a throw-away
CODEX_HOME (a fresh 0700 temporary folder), attached to this terminal. The browser sign-in is used
when a browser can be opened here; `--device-auth` (a code to type at a URL on any other device) is
used when asked, or when there is no browser (no DISPLAY / WAYLAND_DISPLAY / BROWSER on Linux, an SSH
session on macOS), and the command says which. The `auth.json` Codex writes is then imported as
NAME.json exactly as scripts/import-account does (validated, 0600, atomic; an account already in the
pool is refused unless --replace), and the throw-away home is removed whatever happens.

`--issuer URL` passes Codex 0.169.0's hidden `--experimental_issuer URL` (a non-OpenAI OAuth
issuer, for tests against a local server). Codex 0.169.0 honours it only in the device-code flow
(its browser flow still goes to https://auth.openai.com), so --issuer implies --device-auth.

Exit 0 on success; 2 for a bad argument, configuration, Codex binary or a refused import; the
`codex login` exit status when the login itself failed (128+N when it was killed by signal N).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from codex_pool.cli.accounts import report_import
from codex_pool.cli.project import load_settings, project_root
from codex_pool.core.config import ConfigError
from codex_pool.storage.pool_accounts import (
    AccountFileError,
    check_name,
    import_account,
)

PROG = "login"
# Codex writes auth.json only with the file credential store (the default; pinned so a keyring
# default in some build cannot leave the throw-away home empty).
FILE_STORE = 'cli_auth_credentials_store="file"'




def browser_missing(env: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why no browser can be opened here (so the device-code login is needed), or None."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if env.get("BROWSER"):
        return None
    if platform == "darwin" or platform.startswith("win"):
        if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
            return "this is an SSH session"
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return "no DISPLAY, WAYLAND_DISPLAY or BROWSER is set"


def find_codex(root: Path, given: str | None) -> Path:
    """The Codex binary to run: --codex, else what scripts/install-codex prints (installing it)."""
    if given:
        path = Path(given).expanduser()
        found = shutil.which(str(path)) if not path.exists() else str(path)
        if not found or not os.access(found, os.X_OK) or Path(found).is_dir():
            raise AccountFileError(f"--codex {given}: not an executable file")
        return Path(found)
    installer = root / "scripts" / "install-codex"
    try:
        r = subprocess.run([str(installer)], stdout=subprocess.PIPE, text=True, check=False)
    except OSError as e:
        raise AccountFileError(f"cannot run {installer} ({e.strerror or e}); give the Codex binary with --codex PATH") from None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        raise AccountFileError(f"{installer} found no Codex CLI (exit {r.returncode}); install Node.js/npm, "
                               "or give the Codex binary with --codex PATH")
    return Path(lines[-1])


def login_main(argv: list[str] | None = None, root: Path | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Sign a ChatGPT account in with `codex login` (throw-away "
                                "CODEX_HOME) and import it into the pool as NAME.json.")
    p.add_argument("name", help="the account's name in the pool (its file is NAME.json)")
    p.add_argument("--device-auth", action="store_true",
                   help="sign in with a one-time code at a URL, from any device (default when no browser is available)")
    p.add_argument("--config", metavar="PATH", help="settings file (default: mitm.yaml in the project root)")
    p.add_argument("--replace", action="store_true", help="replace the pool file that already holds this account")
    p.add_argument("--codex", metavar="PATH", help="the Codex CLI binary (default: the one scripts/install-codex prints)")
    p.add_argument("--issuer", metavar="URL", help="OAuth issuer instead of https://auth.openai.com (tests; "
                   "Codex's hidden --experimental_issuer; implies --device-auth)")
    args = p.parse_args(argv)
    root = root or project_root()
    try:
        check_name(args.name)
        config = load_settings(args.config, root)
        codex = find_codex(root, args.codex)
    except (ConfigError, AccountFileError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2

    why = None if args.device_auth or args.issuer else browser_missing()
    if args.device_auth:
        print(f"{PROG}: device-code sign-in (--device-auth, as asked)", file=sys.stderr)
    elif args.issuer:
        print(f"{PROG}: device-code sign-in (--issuer: Codex honours a custom issuer only there)", file=sys.stderr)
    elif why:
        print(f"{PROG}: device-code sign-in, because {why}: open the URL below on any device "
              "(a browser sign-in needs a browser on this machine)", file=sys.stderr)
    else:
        print(f"{PROG}: browser sign-in (scripts/login {args.name} --device-auth signs in from another device instead)",
              file=sys.stderr)
    cmd = [str(codex), "login", "-c", FILE_STORE]
    if args.device_auth or args.issuer or why:
        cmd.append("--device-auth")
    if args.issuer:
        cmd += ["--experimental_issuer", args.issuer]

    home = Path(tempfile.mkdtemp(prefix="codex-pool-login-"))
    try:
        home.chmod(0o700)
        print(f"{PROG}: throw-away CODEX_HOME {home} (removed afterwards; your ~/.codex is not touched)",
              file=sys.stderr)
        try:
            status = subprocess.run(cmd, env={**os.environ, "CODEX_HOME": str(home)}, check=False).returncode
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; nothing imported", file=sys.stderr)
            return 130
        except OSError as e:
            print(f"{PROG}: cannot run {codex} ({e.strerror or e})", file=sys.stderr)
            return 2
        if status != 0:
            code = 128 - status if status < 0 else status
            print(f"{PROG}: `codex login` failed (exit {code}); nothing imported", file=sys.stderr)
            return code
        source = home / "auth.json"
        if not source.is_file():
            print(f"{PROG}: `codex login` succeeded but wrote no auth.json in {home}; nothing imported", file=sys.stderr)
            return 2
        try:
            done = import_account(config.pool_dir, args.name, source, replace=args.replace)
        except AccountFileError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
    finally:
        shutil.rmtree(home, ignore_errors=True)

    report_import(done)
    return 0
