"""`scripts/install-service`: run the proxy as a service — a systemd unit (Linux) or a launchd agent
(macOS) that starts `scripts/run --config <mitm.yaml>`, restarts it when it fails, stops it with
SIGTERM (mitmdump's own handler: the addon's `done` flushes the ledger, the event log and the
serving state) and sends its log to the journal (launchd: files under data_dir/logs).

    scripts/install-service [--user|--system] [--config PATH] [--uninstall] [--print] [--launchd]

  (default)   a systemd user unit: ${XDG_CONFIG_HOME:-~/.config}/systemd/user/codex-pool.service
  --system    /etc/systemd/system/codex-pool.service, run as the invoking user (User=; $SUDO_USER
              under sudo); needs root to write
  --launchd   (the default on macOS) ~/Library/LaunchAgents/com.codex-pool.proxy.plist
  --print     print the unit (or plist) instead of writing it
  --uninstall remove the unit (or plist) and say how to stop what is running

Paths follow $HOME (and $XDG_CONFIG_HOME), so a test can write into a scratch home. Nothing is
started: the systemctl / launchctl commands to run are printed. Exit 0 on success, 2 for a bad
argument or configuration, 1 when the file cannot be written or removed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import plistlib
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from codex_pool.cli.project import project_root
from codex_pool.core.config import Config, ConfigError, default_config
from codex_pool.storage.config_file import load_config

UNIT_NAME = "codex-pool"
LAUNCHD_LABEL = "com.codex-pool.proxy"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
RESTART_SECONDS = 5
# SIGTERM → mitmdump shuts down: `done` writes the queued ledger records, the event log and
# state.json (milliseconds; a big queued batch after a long disk outage takes longer).
STOP_TIMEOUT_SECONDS = 30
# a config that cannot start (bad mitm.yaml, data_dir held by another proxy) is retried every
# RESTART_SECONDS, then given up after this many failures within the interval
START_LIMIT_BURST = 10
START_LIMIT_INTERVAL_SECONDS = 300


@dataclass(frozen=True)
class Target:
    root: Path  # the project folder
    run: Path  # scripts/run
    config_path: Path | None  # the absolute mitm.yaml, None: scripts/run's built-in defaults
    config: Config
    python: str | None  # the interpreter .venv was made with (PYTHON= for scripts/run)


# ---- what gets written -----------------------------------------------------------------------


def venv_base_python(root: Path) -> str | None:
    """The Python `.venv` was created with, from .venv/pyvenv.cfg. scripts/run picks its Python
    from PATH (python3.13, python3.12, python3) and recreates .venv when that one's version differs:
    under systemd/launchd PATH is minimal, so the service names the same interpreter in PYTHON."""
    cfg = root / ".venv" / "pyvenv.cfg"
    try:
        lines = cfg.read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    exe = values.get("executable")
    if exe and Path(exe).exists():
        return exe
    home, version = values.get("home"), values.get("version", "")
    if home:
        minor = ".".join(version.split(".")[:2])
        for name in (f"python{minor}" if minor else None, "python3"):
            if name and (Path(home) / name).exists():
                return str(Path(home) / name)
    return None


def environment(target: Target) -> dict[str, str]:
    """Only what the service needs beyond what systemd/launchd give it."""
    env = {}
    if target.python:
        env["PYTHON"] = target.python
    # mitmdump's log handler prints without flushing: unbuffered, each line reaches the journal
    # (or the log file) when it is written, not 8 KB later
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exec_argv(target: Target) -> list[str]:
    argv = [str(target.run)]
    if target.config_path is not None:
        argv += ["--config", str(target.config_path)]
    return argv


def _systemd_escape(value: str) -> str:
    """A value with specifiers (%) and, for command lines, variable references ($) left literal."""
    return value.replace("%", "%%")


def _systemd_word(arg: str) -> str:
    """One ExecStart= argument, quoted when it must be (systemd's own quoting rules)."""
    arg = _systemd_escape(arg).replace("$", "$$")
    if arg and not any(c in arg for c in " \t\n\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _env_assignment(key: str, value: str) -> str:
    pair = _systemd_escape(f"{key}={value}")
    if not any(c in pair for c in " \t\"'\\"):
        return pair
    return '"' + pair.replace("\\", "\\\\").replace('"', '\\"') + '"'


def file_uri(path: Path) -> str:
    return "file://" + urllib.parse.quote(str(path))


def systemd_unit(target: Target, *, system: bool, user: str | None = None) -> str:
    c = target.config
    lines = [
        "# written by scripts/install-service; run it again after moving the project or its .venv",
        "[Unit]",
        f"Description=codex-pool: Codex CLI through a pool of ChatGPT accounts (proxy on {c.listen})",
        f"Documentation={_systemd_escape(file_uri(target.root / 'README.md'))}",
    ]
    if system:  # a user manager has no network-online.target
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SECONDS}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=simple",
    ]
    if system:
        lines.append(f"User={user}")
    lines += [
        f"WorkingDirectory={_systemd_escape(str(target.root))}",
        *(f"Environment={_env_assignment(k, v)}" for k, v in environment(target).items()),
        # scripts/run execs .venv/bin/python, which execs mitmdump: one process, systemd's main PID
        "ExecStart=" + " ".join(_systemd_word(a) for a in exec_argv(target)),
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        # mitmdump's SIGTERM handler shuts down in order: the addon's `done` flushes the ledger,
        # the event log and state.json before the process exits
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        # 143 = 128 + SIGTERM: a stop that lands while scripts/run is still a shell (installing .venv)
        "SuccessExitStatus=143",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={UNIT_NAME}",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def log_paths(config: Config) -> tuple[Path, Path]:
    logs = config.data_dir / "logs"
    return logs / f"{UNIT_NAME}.log", logs / f"{UNIT_NAME}.err.log"


def launchd_plist(target: Target) -> bytes:
    out, err = log_paths(target.config)
    doc = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": exec_argv(target),
        "WorkingDirectory": str(target.root),
        "EnvironmentVariables": environment(target),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # start again after a failure, not after a clean stop
        "ThrottleInterval": RESTART_SECONDS,
        "ExitTimeOut": STOP_TIMEOUT_SECONDS,  # SIGTERM, then this long for the flush before SIGKILL
        "StandardOutPath": str(out),
        "StandardErrorPath": str(err),
    }
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=False)


# ---- where it goes, and what to run then ---------------------------------------------------------


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "systemd" / "user"


def unit_path(system: bool) -> Path:
    return (SYSTEM_UNIT_DIR if system else user_unit_dir()) / f"{UNIT_NAME}.service"


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def invoking_user() -> str:
    """Who the system unit runs as: the one who ran sudo, else whoever runs this."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        return sudo_user
    return getpass.getuser()


def _systemctl(system: bool) -> tuple[str, str]:
    return ("sudo systemctl", "sudo journalctl") if system else ("systemctl --user", "journalctl --user")


def after_install_systemd(path: Path, system: bool, config: Config) -> str:
    ctl, journal = _systemctl(system)
    lines = [
        f"wrote {path}",
        f"the service runs the proxy on http://{config.listen}; start it and follow its log with:",
        f"  {ctl} daemon-reload && {ctl} enable --now {UNIT_NAME}",
        f"  {journal} -u {UNIT_NAME} -f",
        f"stop / restart: {ctl} stop {UNIT_NAME}   {ctl} restart {UNIT_NAME}   status: {ctl} status {UNIT_NAME}",
    ]
    if not system:
        lines.append("keep it running after you log out (and start it at boot):")
        lines.append("  loginctl enable-linger $USER")
    return "\n".join(lines)


def after_install_launchd(path: Path, config: Config) -> str:
    out, err = log_paths(config)
    return "\n".join([
        f"wrote {path}",
        f"the agent runs the proxy on http://{config.listen}; load it (it starts at once and at every login):",
        f"  launchctl bootstrap gui/$(id -u) {path}",
        f"  tail -f {out} {err}",
        f"restart: launchctl kickstart -k gui/$(id -u)/{LAUNCHD_LABEL}",
        f"stop and unload: launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}",
    ])


def _disable_links(path: Path) -> list[Path]:
    """The `*.wants/` links `systemctl enable` made to this unit (what `disable` removes)."""
    links = []
    for wants in path.parent.glob("*.wants"):
        link = wants / path.name
        if link.is_symlink():
            links.append(link)
    return links


# ---- command line ------------------------------------------------------------------------------


def _target(config_arg: str | None, root: Path) -> Target:
    if config_arg is not None:
        path = Path(config_arg).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such settings file")
        path = path.resolve()
    else:
        default = root / "mitm.yaml"
        path = default.resolve() if default.is_file() else None
    config = load_config(path) if path is not None else default_config(root)
    return Target(root=root, run=root / "scripts" / "run", config_path=path, config=config,
                  python=venv_base_python(root))


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="install-service",
        description="Install the proxy as a service: a systemd unit (user unit by default) or, on macOS, a launchd agent.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--user", action="store_true", help="a systemd user unit in ~/.config/systemd/user (the default)")
    scope.add_argument("--system", action="store_true",
                       help="a system unit in /etc/systemd/system that runs as you (User=); needs root to write")
    p.add_argument("--config", metavar="PATH", help="settings file (default: mitm.yaml in the project root)")
    p.add_argument("--launchd", action="store_true", help="a launchd agent plist (the default on macOS)")
    p.add_argument("--uninstall", action="store_true", help="remove the unit (or plist) instead")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the unit (or plist); write nothing")
    args = p.parse_args(argv)
    launchd = args.launchd or (sys.platform == "darwin" and not (args.user or args.system))
    if launchd and args.system:
        p.error("--system is for systemd; with --launchd the plist is a per-user agent")
    root = (root or project_root()).resolve()

    if args.uninstall:
        return _uninstall(launchd, args.system, args.print_only)

    try:
        target = _target(args.config, root)
    except ConfigError as e:
        print(f"install-service: {e}", file=sys.stderr)
        return 2
    if not os.access(target.run, os.X_OK):
        print(f"install-service: {target.run} is missing or not executable", file=sys.stderr)
        return 2
    notes = []
    if target.config_path is None:
        notes.append(f"note: no mitm.yaml in {root}: the service runs scripts/run with its built-in defaults")
    if target.python is None:
        notes.append("note: no .venv yet (or its Python is gone): the service's first start creates it with the "
                     "python3 on systemd's PATH; run scripts/run once first, then install the service again")

    if launchd:
        body, path = launchd_plist(target), plist_path()
    else:
        user = invoking_user() if args.system else None
        body, path = systemd_unit(target, system=args.system, user=user).encode(), unit_path(args.system)
    if args.print_only:
        sys.stdout.write(body.decode())
        for note in notes:
            print(note, file=sys.stderr)
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        if launchd:  # launchd opens the log files but does not create their folder
            log_paths(target.config)[0].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        hint = " (run it with sudo, or --print and install the unit yourself)" if args.system else ""
        print(f"install-service: cannot write {path}: {e.strerror or e}{hint}", file=sys.stderr)
        return 1
    for note in notes:
        print(note)
    print(after_install_launchd(path, target.config) if launchd else after_install_systemd(path, args.system, target.config))
    return 0


def _uninstall(launchd: bool, system: bool, print_only: bool) -> int:
    path = plist_path() if launchd else unit_path(system)
    links = [] if launchd else _disable_links(path)
    if print_only:
        print(f"would remove {path}" + "".join(f"\nwould remove {link}" for link in links))
        return 0
    if not path.exists() and not links:
        print(f"install-service: nothing to remove: {path} does not exist")
        return 0
    try:
        for link in links:  # what `systemctl disable` does, so nothing is left pointing at a missing file
            link.unlink()
        path.unlink(missing_ok=True)
    except OSError as e:
        print(f"install-service: cannot remove {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"removed {path}" + "".join(f"\nremoved {link} (disabled)" for link in links))
    if launchd:
        print(f"if it is loaded, stop and unload it: launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}")
    else:
        ctl, _ = _systemctl(system)
        print("if it is running, stop it and let systemd forget it (the enable links are already gone):")
        print(f"  {ctl} stop {UNIT_NAME}; {ctl} daemon-reload")
    return 0
