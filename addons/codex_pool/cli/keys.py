"""`scripts/keys`: the client keys a shared proxy accepts (the file `client_keys` in mitm.yaml names).

    scripts/keys create NAME [--expires DATE|never] [--models a,b] [LIMITS]
    scripts/keys list [--json]
    scripts/keys revoke NAME
    scripts/keys edit NAME [--expires DATE|never] [--models a,b|""] [LIMITS] [--no-LIMIT ...]

LIMITS: --requests-per-minute N, --tokens-per-5h N, --tokens-per-day N, --tokens-per-week N
(input + output tokens), --usd-per-day X, --usd-per-month X (30 rolling days; cost from `prices`
in mitm.yaml). `edit` removes a limit with --no-LIMIT (e.g. --no-tokens-per-day); a limit is a
positive number. DATE: YYYY-MM-DD (00:00 UTC that day) or YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] (UTC
when no offset is given). `--models ""` (edit) allows every model again.

`create` prints the new key on stdout, once: only its keyed hash is stored. `list` never prints a
key or a hash. Every command takes `--config PATH` (default: the project's mitm.yaml). Exit 0 on
success, 2 for a bad argument, configuration or keys file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from codex_pool.cli.project import project_root
from codex_pool.core.client_keys import (
    LIMITS,
    LONGEST_WINDOW,
    NAME,
    ClientKey,
    KeyFile,
    KeysError,
    key_digest,
    usage_from_records,
)
from codex_pool.core.config import ConfigError, default_config
from codex_pool.core.usage_report import format_when, parse_when
from codex_pool.storage.config_file import load_config
from codex_pool.storage.keys_file import (
    KeysFileMissing,
    load_keys,
    new_key,
    update_keys,
)
from codex_pool.storage.ledger_store import LedgerStore

PROG = "keys"
ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"
LIMIT_TITLES = {
    "requests_per_minute": "requests per minute",
    "tokens_per_5h": "tokens per 5 hours",
    "tokens_per_day": "tokens per day",
    "tokens_per_week": "tokens per week",
    "usd_per_day": "US$ per day",
    "usd_per_month": "US$ per 30 days",
}


class Refused(Exception):
    """A command that cannot be carried out as asked (exit 2, message on stderr)."""


# ---- arguments -----------------------------------------------------------------------------------

def _flag(limit: str) -> str:
    return "--" + limit.replace("_", "-")


def _metavar(limit: str) -> str:
    return "X" if LIMITS[limit][1] == "usd" else "N"


def _limit_value(limit: str):
    is_usd = LIMITS[limit][1] == "usd"

    def convert(text: str) -> float:
        try:
            value = float(text) if is_usd else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a number' if is_usd else 'a whole number'}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(
                f"{text!r}: a limit must be above 0 (edit removes one with --no-{limit.replace('_', '-')})")
        return float(value)
    return convert


def _name(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a key name is 1-64 letters, digits, '.', '_' or '-', "
                                         "starting with a letter or digit")
    return text


def _models(text: str) -> tuple[str, ...] | None:
    """`a,b` -> ("a", "b"); "" -> None (every model)."""
    out: list[str] = []
    for m in (part.strip() for part in text.split(",")):
        if m and m not in out:
            out.append(m)
    return tuple(out) or None


def _expires(text: str) -> float | None:
    if text.strip().lower() == "never":
        return None
    try:
        return parse_when(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or never") from None


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="settings file (default: mitm.yaml in the project root)")
    p = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Client keys of a shared codex-pool proxy (the file `client_keys` in mitm.yaml names).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="DATE: YYYY-MM-DD (00:00 UTC) or YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] (UTC when no offset), or never.\n"
               "Limits are rolling windows; tokens are input + output; US$ from `prices` in mitm.yaml.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", parents=[common], help="make a key and print it (once)")
    create.add_argument("name", type=_name, metavar="NAME", help="who or what the key is for (letters, digits, . _ -)")
    create.add_argument("--expires", type=_expires, metavar="DATE", help="when the key stops working (default: never)")
    create.add_argument("--models", type=_models, metavar="a,b", help="the only models it may use (default: any)")
    for limit in LIMITS:
        create.add_argument(_flag(limit), dest=limit, type=_limit_value(limit), metavar=_metavar(limit),
                            help=f"at most this many {LIMIT_TITLES[limit]}")

    ls = sub.add_parser("list", parents=[common], help="keys, their limits and usage (never the keys)")
    ls.add_argument("--json", action="store_true", help="a JSON document instead of text")

    revoke = sub.add_parser("revoke", parents=[common], help="stop a key for good (its name stays taken)")
    revoke.add_argument("name", type=_name, metavar="NAME")

    edit = sub.add_parser("edit", parents=[common], help="change a key's expiry, models or limits")
    edit.add_argument("name", type=_name, metavar="NAME")
    edit.add_argument("--expires", type=_expires, default=argparse.SUPPRESS, metavar="DATE|never",
                      help="a new expiry, or never")
    edit.add_argument("--models", type=_models, default=argparse.SUPPRESS, metavar='a,b|""',
                      help='the only models it may use; "" for any')
    for limit in LIMITS:
        group = edit.add_mutually_exclusive_group()
        group.add_argument(_flag(limit), dest=limit, type=_limit_value(limit), metavar=_metavar(limit),
                           help=f"set the limit on {LIMIT_TITLES[limit]}")
        group.add_argument("--no-" + limit.replace("_", "-"), dest=limit, action="store_const", const=0.0,
                           help="remove that limit")
    return p


# ---- configuration -------------------------------------------------------------------------------

def _config(path: str | None, root: Path):
    if path is not None:
        return load_config(Path(path))
    default = root / "mitm.yaml"
    return load_config(default) if default.exists() else default_config(root)


def keys_path(config: Any, root: Path) -> Path:
    """The keys file `client_keys` names (relative to the settings file's folder); Refused when off."""
    value = getattr(config, "client_keys", None)
    settings = config.source or root / "mitm.yaml"
    if value is None or str(value).strip() == "":
        raise Refused(f"client keys are off in {settings}: add the line `client_keys: keys.json` there "
                      "(a path relative to that file), then run this again")
    return (Path(settings).parent / Path(str(value)).expanduser()).absolute()


# ---- commands ------------------------------------------------------------------------------------

def state(key: ClientKey, now: float) -> str:
    if key.revoked is not None:
        return REVOKED
    if key.expires is not None and key.expires <= now:
        return EXPIRED
    return ACTIVE


def _find(keyfile: KeyFile, name: str) -> ClientKey:
    for k in keyfile.keys:
        if k.name == name:
            return k
    known = ", ".join(k.name for k in keyfile.keys) or "none"
    raise Refused(f"no key named {name!r} (keys: {known}); scripts/keys list shows them")


def _replace(keyfile: KeyFile, new: ClientKey) -> KeyFile:
    return KeyFile(keyfile.salt, [new if k.name == new.name else k for k in keyfile.keys])


def _future(expires: float | None, now: float) -> None:
    if expires is not None and expires <= now:
        raise Refused(f"--expires {format_when(expires)} is not in the future; "
                      "to stop a key now, use scripts/keys revoke NAME")


def cmd_create(args: argparse.Namespace, path: Path, now: float) -> int:
    _future(args.expires, now)
    limits = {limit: getattr(args, limit) for limit in LIMITS if getattr(args, limit) is not None}
    key = new_key()

    def change(keyfile: KeyFile) -> KeyFile:
        for k in keyfile.keys:
            if k.name == args.name:
                if k.revoked is not None:
                    raise Refused(f"a revoked key named {args.name!r} exists (names are not reused); choose another name")
                raise Refused(f"a key named {args.name!r} exists already ({state(k, now)}); change it with "
                              f"scripts/keys edit {args.name} …, or stop it with scripts/keys revoke {args.name}")
        entry = ClientKey(name=args.name, digest=key_digest(keyfile.salt, key), created=float(int(now)),
                          expires=args.expires, models=args.models, limits=limits)
        return KeyFile(keyfile.salt, [*keyfile.keys, entry])

    written = update_keys(path, change, create=True)
    print(key, flush=True)
    print(f"{PROG}: created {describe(_find(written, args.name), now)} in {path}.\n"
          f"{PROG}: this is the only time the key is shown (only its hash is kept): hand it to its holder now.",
          file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace, path: Path, now: float) -> int:
    already: list[ClientKey] = []

    def change(keyfile: KeyFile) -> KeyFile:
        k = _find(keyfile, args.name)
        if k.revoked is not None:
            already.append(k)
            return keyfile
        return _replace(keyfile, dataclasses.replace(k, revoked=float(int(now))))

    update_keys(path, change)
    if already:
        print(f"{args.name}: revoked already, on {format_when(already[0].revoked)}; nothing changed")
    else:
        print(f"{args.name}: revoked (the name stays taken); a running proxy refuses the key within seconds")
    return 0


def cmd_edit(args: argparse.Namespace, path: Path, now: float) -> int:
    given = {limit: getattr(args, limit) for limit in LIMITS if getattr(args, limit) is not None}
    if not given and not hasattr(args, "expires") and not hasattr(args, "models"):
        raise Refused("nothing to change: give --expires, --models, or a limit flag (--no-LIMIT removes one); "
                      "see scripts/keys edit --help")
    if hasattr(args, "expires"):
        _future(args.expires, now)

    def change(keyfile: KeyFile) -> KeyFile:
        k = _find(keyfile, args.name)
        if k.revoked is not None:
            raise Refused(f"the key {args.name!r} was revoked on {format_when(k.revoked)} and stays revoked; "
                          "create a new key under another name")
        limits = dict(k.limits)
        for limit, value in given.items():
            if value:
                limits[limit] = value
            else:
                limits.pop(limit, None)
        new = dataclasses.replace(k, limits=limits)
        if hasattr(args, "expires"):
            new = dataclasses.replace(new, expires=args.expires)
        if hasattr(args, "models"):
            new = dataclasses.replace(new, models=args.models)
        return _replace(keyfile, new)

    written = update_keys(path, change)
    print(f"changed {describe(_find(written, args.name), now)}; a running proxy applies it within seconds")
    return 0


def describe(key: ClientKey, now: float) -> str:
    limits = ", ".join(f"{LIMIT_TITLES[n]} {_amount(n, v)}" for n, v in key.limits.items()) or "no limits"
    return (f"key {key.name!r} ({state(key, now)}; expires {format_when(key.expires) or 'never'}; "
            f"models {', '.join(key.models) if key.models is not None else 'any'}; {limits})")


def _amount(limit: str, value: float | None) -> str:
    if value is None:
        return "-"
    if LIMITS[limit][1] == "usd":
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


def cmd_list(args: argparse.Namespace, path: Path, now: float, config: Any) -> int:
    try:
        keyfile = load_keys(path)
    except KeysFileMissing:
        keyfile = KeyFile(b"", [])
    ledger = config.data_dir / "ledger"
    store = LedgerStore(ledger)
    unpriced: set[str] = set()
    usage = usage_from_records(store.query(since=now - LONGEST_WINDOW - 86400),
                               [k.name for k in keyfile.keys], now, config.prices or None, unpriced)
    for w in store.take_warnings():
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    rows = []
    for k in keyfile.keys:
        rows.append({
            "name": k.name,
            "state": state(k, now),
            "created": format_when(k.created),
            "expires": format_when(k.expires),
            "revoked": format_when(k.revoked),
            "models": list(k.models) if k.models is not None else None,
            "limits": dict(k.limits),
            "usage": {limit: {**w, "resets_at": format_when(w["resets_at"])}
                      for limit, w in usage[k.name].snapshot(k.limits, now).items()},
        })
    if args.json:
        print(json.dumps({"file": str(path), "ledger": str(ledger), "as_of": format_when(now),
                          "unpriced_models": sorted(unpriced), "keys": rows}, indent=2))
    elif not rows:
        print(f"No keys in {path} yet; create one with scripts/keys create NAME")
    else:
        print(f"Keys in {path}; usage from the ledger {ledger}, as of {format_when(now)}")
        for row in rows:
            print()
            print(_text_row(row))
    if unpriced and not args.json:
        print(f"\nUS$ counts 0 for models without a price: {', '.join(sorted(unpriced))}; "
              f"add them under prices in {config.source or 'mitm.yaml'}")
    return 0


def _text_row(row: dict[str, Any]) -> str:
    when = f"revoked {row['revoked']}" if row["revoked"] else f"expires {row['expires'] or 'never'}"
    models = ", ".join(row["models"]) if row["models"] is not None else "any"
    lines = [f"{row['name']}  {row['state']}  created {row['created']}  {when}  models: {models}"]
    for limit, w in row["usage"].items():
        used = _amount(limit, w["used"])
        if w["limit"] is None:
            tail = "no limit"
        else:
            tail = f"of {_amount(limit, w['limit'])}"
            if w["resets_at"]:
                tail += f"  REACHED, frees up at {w['resets_at']}"
        lines.append(f"  {LIMIT_TITLES[limit]:<20} {used:>14}  {tail}")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        root = root or project_root()
        config = _config(getattr(args, "config", None), root)
        path = keys_path(config, root)
        now = time.time()
        if args.command == "list":
            return cmd_list(args, path, now, config)
        return {"create": cmd_create, "revoke": cmd_revoke, "edit": cmd_edit}[args.command](args, path, now)
    except (ConfigError, KeysError, Refused) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
