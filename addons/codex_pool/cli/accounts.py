"""`scripts/import-account` and `scripts/remove-account`: accounts into and out of the pool folder
(the one `pool_dir` in mitm.yaml names), so nobody copies auth.json files by hand.

    scripts/import-account NAME [--from CODEX_HOME] [--config PATH] [--replace]
    scripts/remove-account NAME [--config PATH]

import-account copies `<CODEX_HOME>/auth.json` (default $CODEX_HOME, else ~/.codex) into the pool
as NAME.json (0600, written atomically) after validating it, and prints the account's email, plan
and access-token expiry; an account id already in the pool is refused, naming its file, unless
--replace (the old file then moves to pool/.removed/, so its refresh token is never used again).
remove-account moves NAME.json to pool/.removed/ (nothing is deleted); a running proxy drops the
account within `pool_scan_seconds` (POST /admin/accounts/NAME/remove does it at once). Exit 0 on
success, 2 for a bad argument, configuration or file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from codex_pool.cli.project import load_settings, project_root, when_utc
from codex_pool.core.config import ConfigError
from codex_pool.storage.pool_accounts import (
    AccountFileError,
    import_account,
    remove_account,
)


def import_main(argv: list[str] | None = None, root: Path | None = None) -> int:
    p = argparse.ArgumentParser(prog="import-account", description="Copy a Codex login into the pool as NAME.json.")
    p.add_argument("name", help="the account's name in the pool (its file is NAME.json)")
    p.add_argument("--from", dest="home", metavar="CODEX_HOME",
                   help="the Codex home whose auth.json to import (default: $CODEX_HOME, else ~/.codex)")
    p.add_argument("--config", metavar="PATH", help="settings file (default: mitm.yaml in the project root)")
    p.add_argument("--replace", action="store_true", help="replace the pool file that already holds this account")
    args = p.parse_args(argv)
    try:
        config = load_settings(args.config, root or project_root())
        home = Path(args.home or os.environ.get("CODEX_HOME") or Path.home() / ".codex").expanduser()
        done = import_account(config.pool_dir, args.name, home / "auth.json", replace=args.replace)
    except (ConfigError, AccountFileError) as e:
        print(f"import-account: {e}", file=sys.stderr)
        return 2
    report_import(done)
    return 0


def report_import(done) -> None:
    """What an import printed (scripts/import-account and scripts/login alike)."""
    a = done.account
    print(f"imported {done.path.name}: {a.email or 'no email'}, plan {a.plan or 'unknown'}, "
          f"access token expires {when_utc(a.access_expires_at)}")
    if done.replaced is not None:
        print(f"the file that held this account before is now {done.replaced} (its refresh token is not used again)")
    print("a running proxy serves it within its pool_scan_seconds")


def remove_main(argv: list[str] | None = None, root: Path | None = None) -> int:
    p = argparse.ArgumentParser(prog="remove-account", description="Take NAME.json out of the pool (to pool/.removed/).")
    p.add_argument("name")
    p.add_argument("--config", metavar="PATH", help="settings file (default: mitm.yaml in the project root)")
    args = p.parse_args(argv)
    try:
        config = load_settings(args.config, root or project_root())
        moved = remove_account(config.pool_dir, args.name)
    except (ConfigError, AccountFileError) as e:
        print(f"remove-account: {e}", file=sys.stderr)
        return 2
    print(f"moved {args.name}.json to {moved}; a running proxy stops using it within its pool_scan_seconds "
          f"(POST /admin/accounts/{args.name}/remove does it at once)")
    return 0
