"""Command line: run the simulated backend until SIGTERM/SIGINT.

    fake-chatgpt [--host 127.0.0.1] [--port 0] (--accounts N | --names alice,bob)
                 [--pool-dir DIR] [--plan plus] [--access-ttl SECONDS]
                 [--access-ttls S1,S2,...] [--initial-access-ages S1,S2,...]
                 [--no-websocket] [--stream-delay S] [--deltas N] [--schedule FILE] [--lenient]
                 [--tls-dir DIR | --tls-cert PEM --tls-key PEM]

`--help` lists the backend rules enforced on responses requests, each with its public source
(rules.py), and the side endpoints answered (side.py). Prints `fake-chatgpt listening at <url>` (flushed) once listening. Tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

from . import rules, side
from .server import FakeChatGPT
from .state import SCHEDULE_ACTIONS, Config


def write_auth_file(directory: str, name: str, auth: dict) -> str:
    path = os.path.join(directory, f"{name}.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            fd = -1
            json.dump(auth, f, indent=2)
            f.write("\n")
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)
    return path


def make_pool_dir(directory: str) -> None:
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fake-chatgpt",
        description="Simulated ChatGPT backend for the Codex CLI.",
        epilog=SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--accounts", type=int, default=None, help="create N accounts named acct1..acctN")
    g.add_argument("--names", default=None, help="comma-separated account names to create")
    p.add_argument("--pool-dir", default=None, help="write each account's auth.json as DIR/<name>.json (0600)")
    p.add_argument("--plan", default="plus", help="plan type of the created accounts (default plus)")
    p.add_argument("--access-ttl", type=float, default=None, help="access token lifetime in seconds (default 10 days)")
    p.add_argument("--access-ttls", type=_floats, default=None, metavar="S1,S2,...",
                   help="access token lifetime per account, in seconds, in account order (cycled; "
                        "overrides --access-ttl): short-lived tokens that expire every minute or two")
    p.add_argument("--initial-access-ages", type=_floats, default=None, metavar="S1,S2,...",
                   help="per account (cycled): issue the first access token this many seconds ago, "
                        "so expiries are staggered")
    p.add_argument("--schedule", default=None, metavar="FILE",
                   help="JSON file of timed actions ({\"actions\": [...]}, `at` = seconds after start-up), "
                        "run while serving; see below and GET/POST /_fake/schedule")
    p.add_argument("--no-websocket", action="store_true", help="answer WebSocket upgrades with 426")
    p.add_argument("--lenient", action="store_true",
                   help="do not enforce the backend rules below (any responses body is served, as before); "
                        "also POST /_fake/config {\"lenient\": true|false} at run time")
    p.add_argument("--stream-delay", type=float, default=0.0, help="seconds between stream events")
    p.add_argument("--deltas", type=int, default=3, help="text deltas per answer")
    p.add_argument("--backlog", type=int, default=512, help="listen backlog (min 128)")
    p.add_argument("--tls-dir", default=None, help="serve https with a fresh CA + leaf written to DIR (ca.pem)")
    p.add_argument("--tls-cert", default=None, help="serve https with this certificate chain (PEM)")
    p.add_argument("--tls-key", default=None, help="private key of --tls-cert (PEM)")
    return p.parse_args(argv)


SCHEDULE_HELP = """\
timed actions (--schedule FILE, or POST /_fake/schedule at run time; GET lists pending and done):
  each {"at": SECONDS, "do": ACTION, ...}; `at` counts from start-up (from the POST for the API):
""" + "\n".join(f"  {name:<13} {what}" for name, what in SCHEDULE_ACTIONS.items()) + """
  e.g. {"actions": [{"at": 30, "do": "limit", "account": "alice", "seconds": 45},
                    {"at": 40, "do": "fault", "fault": {"kind": "status", "status": 503, "account": "bob"}},
                    {"at": 60, "do": "revoke", "account": "carol", "refresh_only": true},
                    {"at": 120, "do": "login", "account": "carol", "write": true}]}
  A limit turns the window to 100 % until `seconds` from then (turns get 429 usage_limit_reached),
  then it resets to 0 %. A revoke with refresh_only leaves issued access tokens valid until they
  expire. A login with write (default with --pool-dir) replaces <pool-dir>/<account>.json.

control API (JSON under /_fake/; all of it in scripts/fake_chatgpt/README.md), among others:
  POST accounts/NAME/limit {seconds, window?}   the same timed limit, now
  POST accounts/NAME/revoke {refresh_only?}     revoke every token, or only the refresh tokens
  POST accounts/NAME/login {write?}             a fresh login; write: also <pool-dir>/NAME.json
  GET  tokens                                   every token issued so far (for leak scans)
  GET  state                                    per account also refresh_reused (a rotated refresh
                                                token presented again), refresh_after_refusal
  GET  requests                                 completed answers carry completed: true and usage
                                                (a refused body: status 400 and rule: <rule id>)

""" + rules.help_text() + """

side requests answered (instead of 404; shapes and sources in side.py / README.md):
""" + "\n".join(f"  {m:<4} {p:<44} {a}" for (p, m), a in side.ROUTES.items()) + """
  anything else under /backend-api/ -> 404 {"detail":"Not Found"}

tool calls: a latest user message with RUN_TOOL calls the request's shell tool (exec_command,
shell_command, shell, local_shell), else the first function tool whose name suggests a shell
(bash, sh, shell, terminal, cmd, command, exec, ...), else the first function tool, with
arguments generated from its JSON schema; RUN_TOOL:<name> [command] names the tool,
RUN_TOOL: <command> sets the command. text.format json_schema answers JSON valid against the
schema; json_object answers {"message": <text>}.
"""


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _ssl_context(args) -> ssl.SSLContext | None:
    cert, key = args.tls_cert, args.tls_key
    if args.tls_dir:
        from .tls import make_ca_and_leaf

        paths = make_ca_and_leaf(args.tls_dir, hosts=[args.host if args.host not in ("", "0.0.0.0") else "127.0.0.1"])
        cert, key = paths["cert"], paths["key"]
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def run(args) -> int:
    config = Config(
        websocket=not args.no_websocket, stream_delay=args.stream_delay, deltas=args.deltas, lenient=args.lenient
    )
    schedule = None
    if args.schedule:
        with open(args.schedule) as f:
            schedule = json.load(f)
        schedule = schedule.get("actions", []) if isinstance(schedule, dict) else schedule
    fake = FakeChatGPT(
        args.host, args.port, config=config, plan=args.plan, backlog=args.backlog, ssl_context=_ssl_context(args),
        pool_dir=args.pool_dir,
    )
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    elif args.accounts:
        names = [f"acct{i}" for i in range(1, args.accounts + 1)]
    else:
        names = []
    await fake.start()
    if args.pool_dir:
        make_pool_dir(args.pool_dir)
    for i, name in enumerate(names):
        ttl = args.access_ttls[i % len(args.access_ttls)] if args.access_ttls else args.access_ttl
        age = args.initial_access_ages[i % len(args.initial_access_ages)] if args.initial_access_ages else 0.0
        auth = fake.add_account(name, plan=args.plan, access_ttl_seconds=ttl, initial_access_age_seconds=age)
        acct = fake.state.accounts[name]
        where = ""
        if args.pool_dir:
            where = " -> " + write_auth_file(args.pool_dir, name, auth)
        print(f"fake-chatgpt account {name} {acct.account_id} {acct.plan}{where}", flush=True)
    if args.tls_dir:
        print(f"fake-chatgpt ca certificate {os.path.join(args.tls_dir, 'ca.pem')}", flush=True)
    if schedule:
        fake.add_schedule(schedule)
    print(f"fake-chatgpt listening at {fake.url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
