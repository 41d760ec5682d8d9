"""Real processes for end-to-end tests: the simulated backend and mitmdump with our addon.

Both bind 127.0.0.1 on an ephemeral port, are read for their "listening at" line, and are stopped
by PID (SIGTERM, then SIGKILL) when the test ends, or at once when they fail to start.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose output is collected line by line in the background."""

    def __init__(self, argv: list[str], ready: re.Pattern[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 30.0):
        self.argv = argv
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.match = self.wait_for(ready, timeout)
        except BaseException:
            self.stop()  # never leave a process behind that did not come up
            raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait until a line (from index `start` on) matches; returns the match."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and i >= len(self.lines)):
                    raise AssertionError(
                        f"no line matching {rx.pattern!r} from {Path(self.argv[0]).name}; output:\n" + self.output()
                    )
                self._cond.wait(min(left, 0.2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class FakeBackend(Proc):
    """scripts/fake-chatgpt as a subprocess, with its control API."""

    def __init__(self, names: list[str], pool_dir: Path, extra: list[str] | None = None):
        argv = [sys.executable, str(ROOT / "scripts" / "fake-chatgpt"), "--host", "127.0.0.1", "--port", "0",
                "--pool-dir", str(pool_dir)]
        if names:
            argv += ["--names", ",".join(names)]
        super().__init__(argv + list(extra or []), re.compile(r"listening at (http://127\.0\.0\.1:\d+)"))
        self.url = self.match.group(1)
        try:
            self.http = httpx.Client(base_url=self.url, timeout=10, trust_env=False)
        except BaseException:
            super().stop()
            raise

    def control(self, method: str, path: str, json: Any = None) -> Any:
        r = self.http.request(method, f"/_fake/{path.lstrip('/')}", json=json)
        r.raise_for_status()
        return r.json() if r.content else None

    def requests(self) -> list[dict]:
        data = self.control("GET", "requests")
        return data["requests"] if isinstance(data, dict) else data

    def clear_requests(self) -> None:
        self.control("DELETE", "requests")

    def state(self) -> dict:
        return self.control("GET", "state")

    def add_account(self, name: str, **kw: Any) -> dict:
        data = self.control("POST", "accounts", {"name": name, **kw})
        return data.get("auth", data)

    def fault(self, **spec: Any) -> Any:
        return self.control("POST", "faults", spec)

    def stop(self) -> int | None:
        if hasattr(self, "http"):
            self.http.close()
        return super().stop()


class Proxy(Proc):
    """Real mitmdump running addons/pool.py in reverse mode in front of `upstream`."""

    def __init__(self, upstream: str, workdir: Path, config: str | None = None, extra: list[str] | None = None,
                 scripts: list[Path] | None = None, entry: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "mitm.yaml"
        if config is not None or not self.config_path.exists():
            self.config_path.write_text(config if config is not None else "pool_dir: pool\ndata_dir: data\n")
        argv = [str(BIN / "mitmdump"), "-s", str(entry or ROOT / "addons" / "pool.py")]  # entry: a copy to edit
        for s in scripts or []:
            argv += ["-s", str(s)]
        argv += [
            "--mode", f"reverse:{upstream}@127.0.0.1:0",
            "--set", "connection_strategy=lazy",
            "--set", f"confdir={workdir / 'confdir'}",
            "--set", f"pool_config={self.config_path}",
            "--set", "termlog_verbosity=info",
            "--set", "flow_detail=1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        super().__init__(argv + list(extra or []), re.compile(r"listening at 127\.0\.0\.1:(\d+)"), env=env, cwd=workdir)
        self.port = int(self.match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            self.http = httpx.Client(base_url=self.url, timeout=30, trust_env=False)
        except BaseException:
            super().stop()
            raise
        self._syncs = 0

    def sync_log(self) -> int:
        """Wait until everything the proxy logged before this call has been read into `lines`: a
        request is made whose flow line mitmdump prints after them. Returns the index after it."""
        self._syncs += 1
        path = f"/healthz?log-sync={self._syncs}"
        self.http.get(path)
        self.wait_for(r"GET \S+" + re.escape(path), 10)  # mitmdump prints the upstream URL
        return len(self.lines)

    def stop(self) -> int | None:
        if hasattr(self, "http"):
            self.http.close()
        return super().stop()
