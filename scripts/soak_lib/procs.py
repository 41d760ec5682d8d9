"""The soak's processes: the simulated backend and the mitmdump proxies, on 127.0.0.1 ephemeral
ports, their output kept in log files (scanned for secrets afterwards), stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, argv: list[str], ready: str, log_path: Path, *, env: dict | None = None,
                 cwd: Path | None = None, timeout: float = 40.0):
        self.argv = argv
        self.log_path = log_path
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.match = self.wait_for(ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            try:
                self._log.write(line + "\n")
                self._log.flush()
            except ValueError:
                pass
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = 0
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-30:])
                    raise RuntimeError(f"{Path(self.argv[0]).name}: no line matching {pattern!r}; output:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        time.sleep(0.1)  # let the pump write the last lines
        try:
            self._log.close()
        except Exception:  # noqa: BLE001
            pass
        return self.proc.returncode

    def rss_kb(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("FAKE_CHATGPT_REEXEC", None)
    return env


def start_backend(python: str, tmp: Path, pool: Path, names: list[str], ttls: list[float], ages: list[float],
                  stream_delay: float) -> tuple[Proc, str]:
    argv = [python, str(ROOT / "scripts" / "fake-chatgpt"), "--host", "127.0.0.1", "--port", "0",
            "--pool-dir", str(pool), "--names", ",".join(names),
            "--access-ttls", ",".join(f"{t:g}" for t in ttls),
            "--initial-access-ages", ",".join(f"{a:g}" for a in ages),
            "--stream-delay", f"{stream_delay:g}"]
    proc = Proc(argv, r"listening at (http://127\.0\.0\.1:\d+)", tmp / "backend.log", env=clean_env())
    return proc, proc.match.group(1)


def start_proxy(python: str, workdir: Path, backend_url: str, settings: str, lag_file: Path) -> tuple[Proc, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "mitm.yaml"
    config.write_text(settings)
    mitmdump = str(Path(python).parent / "mitmdump")
    argv = [mitmdump, "-s", str(ROOT / "addons" / "pool.py"), "-s", str(Path(__file__).with_name("lag_probe.py")),
            "--mode", f"reverse:{backend_url}@127.0.0.1:0",
            "--set", "connection_strategy=lazy",
            "--set", f"confdir={workdir / 'confdir'}",
            "--set", f"pool_config={config}",
            "--set", "termlog_verbosity=info",
            "--set", "flow_detail=1"]
    env = clean_env()
    env["SOAK_LAG_FILE"] = str(lag_file)
    proc = Proc(argv, r"listening at 127\.0\.0\.1:(\d+)", workdir / "mitmdump.log", env=env, cwd=workdir)
    return proc, f"http://127.0.0.1:{proc.match.group(1)}"
