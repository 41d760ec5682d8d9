r"""Drive an interactive terminal program (the Codex TUI) in tmux, for tests.

    if not tmux_available():
        pytest.skip("tmux is not installed")
    with Tmux([codex_bin, "--no-daemon"], env=env, cwd=work, width=200, height=50) as tui:
        tui.wait_for("for agents · ? for shortcuts", 60)   # the session is loaded (typing earlier is lost)
        tui.submit("say hi")                                # bracketed paste, then Enter
        screen = tui.wait_for(re.compile(r"Answer from fake account \S+\."), 60)
        tui.submit("/quit"); tui.wait_exit(20)

Each Tmux runs its own tmux server on a private socket (`-L codex-pool-<pid>-<random>`, with no
user config: `-f` points at a config of our own), so nothing touches the user's tmux sessions, and
`close()` kills exactly that server (and, by its PID, the program if it outlived the hang-up). The
program gets exactly `env` (run through `env -i`), not the test runner's environment.
`remain-on-exit` keeps the pane after the program ends, so a program that exits at once still
leaves its last screen to read, and `exit_status()` says how it ended. Waits poll `capture-pane`
until the text appears (or the program ended, or the timeout passed): no fixed sleeps.

Typing into Codex's composer: `send()` delivers the characters in one burst, and Codex 0.169.0 takes
a fast burst of keys for a paste and treats an Enter within 120 ms of it as part of the paste (not
submitted). `submit()` pastes the text as a bracketed paste and then presses Enter, which Codex
always takes as "submit" — for prompts and for slash commands alike.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

TMUX = os.environ.get("CODEX_POOL_TMUX") or shutil.which("tmux") or "/usr/bin/tmux"


def tmux_available() -> bool:
    """True when a working tmux binary is present (for pytest.skip)."""
    if not (os.path.isfile(TMUX) and os.access(TMUX, os.X_OK)):
        return False
    try:
        return subprocess.run([TMUX, "-V"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


CONFIG = """\
set -g remain-on-exit on
set -g history-limit 20000
set -g status off
set -g escape-time 0
set -g default-terminal xterm-256color
"""


class TmuxError(AssertionError):
    pass


class Tmux:
    """One tmux server with one session running `argv` in a `width`×`height` window."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 width: int = 200, height: int = 50, name: str = "main"):
        if not tmux_available():
            raise TmuxError(f"tmux not available at {TMUX}")
        self.socket = f"codex-pool-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.name = name
        self._dir = Path(tempfile.mkdtemp(prefix="tmux-driver-"))
        conf = self._dir / "tmux.conf"
        conf.write_text(CONFIG)
        self._conf = conf
        run_env = dict(os.environ if env is None else env)
        run_env.setdefault("TERM", "xterm-256color")
        run_env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        command = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in run_env.items()), *argv]
        # The server inherits the environment of this first tmux client: keep it minimal too.
        server_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
                      "HOME": str(self._dir), "TMUX_TMPDIR": os.environ.get("TMUX_TMPDIR", "/tmp")}
        self._server_env = server_env
        self._closed = False
        self.pid = 0
        try:
            self._tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                       *(["-c", str(cwd)] if cwd else []), "--", *command)
            self.pid = int(self._tmux("display-message", "-p", "-t", self.target, "#{pane_pid}").strip())
        except BaseException:
            self.close()
            raise

    # ---- plumbing ---------------------------------------------------------------------------

    def _tmux(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([TMUX, "-L", self.socket, "-f", str(self._conf), *args], capture_output=True,
                              text=True, env=self._server_env, timeout=20, check=False)
        if check and done.returncode != 0:
            raise TmuxError(f"tmux {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _socket_path(self) -> Path:
        base = Path(self._server_env.get("TMUX_TMPDIR") or "/tmp")
        return base / f"tmux-{os.getuid()}" / self.socket

    @property
    def target(self) -> str:
        return f"{self.name}:0.0"

    # ---- input -------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Type `text` literally (no key names are interpreted; newlines are sent as typed)."""
        if text:
            self._tmux("send-keys", "-t", self.target, "-l", "--", text)

    def key(self, *names: str) -> None:
        """Press keys by tmux name: Enter, Escape, C-c, C-d, Up, Down, Tab, BSpace, …"""
        self._tmux("send-keys", "-t", self.target, *names)

    def paste(self, text: str) -> None:
        """Paste `text` as one bracketed paste (when the program enabled bracketed-paste mode)."""
        buf = f"p{uuid.uuid4().hex[:6]}"
        self._tmux("set-buffer", "-b", buf, "--", text)
        self._tmux("paste-buffer", "-p", "-d", "-b", buf, "-t", self.target)

    def submit(self, text: str) -> None:
        """Put `text` in the program's input as one bracketed paste, then press Enter."""
        self.paste(text)
        self.key("Enter")

    # ---- output ------------------------------------------------------------------------------

    def screen(self, history: bool = False, join: bool = True) -> str:
        """The visible pane as text, trailing blanks of each line dropped (with `history`, the
        scrollback too). `join` rejoins lines the terminal wrapped."""
        args = ["capture-pane", "-p", "-t", self.target]
        if join:
            args.append("-J")
        if history:
            args += ["-S", "-"]
        return "\n".join(line.rstrip() for line in self._tmux(*args).splitlines())

    def exit_status(self) -> int | None:
        """None while the program runs; its exit status once it ended (the pane stays, dead), or
        minus the signal number that ended it."""
        for _ in range(20):  # tmux marks the pane dead a moment before it records how the program ended
            out = self._tmux("display-message", "-p", "-t", self.target,
                             "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}").strip().split(":")
            if out[0] != "1":
                return None
            if len(out) > 1 and out[1].isdigit():
                return int(out[1])
            if len(out) > 2 and out[2].isdigit():
                return -int(out[2])
            status = _zombie_status(self.pid)  # ended, but the tmux server has not reaped it yet
            if status is not None:
                return status
            time.sleep(0.05)
        return -1

    def wait_for(self, what: str | re.Pattern[str], timeout: float = 30.0, *, history: bool = False,
                 interval: float = 0.1) -> str:
        """Poll the pane until `what` (a plain string, or a compiled regex) appears; the pane text
        (as `screen()` gives it: trailing blanks dropped, so don't wait for a trailing space).
        Fails at once, with the screen, if the program ended without showing it."""
        found = (lambda s: what in s) if isinstance(what, str) else (lambda s: what.search(s) is not None)
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(history=history)
            if found(text):
                return text
            dead = self.exit_status()
            if dead is not None:
                text = self.screen(history=True)
                if found(text):
                    return text
                raise TmuxError(f"the program exited ({dead}) without showing {_show(what)}; screen:\n{text}")
            if time.monotonic() >= deadline:
                raise TmuxError(f"timed out after {timeout:g} s waiting for {_show(what)}; screen:\n{text}")
            time.sleep(interval)

    def wait_gone(self, what: str | re.Pattern[str], timeout: float = 30.0, interval: float = 0.1) -> str:
        """Poll until `what` is no longer on the visible pane; the pane text."""
        found = (lambda s: what in s) if isinstance(what, str) else (lambda s: what.search(s) is not None)
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if not found(text):
                return text
            if time.monotonic() >= deadline:
                raise TmuxError(f"timed out after {timeout:g} s waiting for {_show(what)} to go; screen:\n{text}")
            time.sleep(interval)

    def wait_exit(self, timeout: float = 30.0, interval: float = 0.1) -> int:
        deadline = time.monotonic() + timeout
        while True:
            status = self.exit_status()
            if status is not None:
                return status
            if time.monotonic() >= deadline:
                raise TmuxError(f"timed out after {timeout:g} s waiting for the program to exit; screen:\n{self.screen()}")
            time.sleep(interval)

    # ---- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill this driver's own tmux server (and with it the program), nothing else."""
        if self._closed:
            return
        self._closed = True
        self._tmux("kill-server", check=False)  # SIGHUP to the program
        self._socket_path().unlink(missing_ok=True)  # tmux leaves the socket file behind
        deadline = time.monotonic() + 5
        while self.pid and _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid and _alive(self.pid):
            try:
                os.kill(self.pid, 9)  # the program we started, by its PID
            except ProcessLookupError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not reaped yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _zombie_status(pid: int) -> int | None:
    """The exit status of an ended, not yet reaped process, from /proc (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "Z" or len(fields) < 50:
        return None
    raw = int(fields[-1])  # exit_code, as waitpid reports it
    return os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else -os.WTERMSIG(raw)


def _show(what: str | re.Pattern[str]) -> str:
    return repr(what) if isinstance(what, str) else f"/{what.pattern}/"
