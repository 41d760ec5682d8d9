"""`scripts/run`: build the mitmdump/mitmweb command line from mitm.yaml and start it.

    scripts/run [--web] [--demo] [--config PATH] [extra mitmdump arguments...]

--demo starts the simulated ChatGPT backend with a generated pool of sample accounts, points the
proxy at it, shows selection and stickiness with a few requests, and prints the Codex config to
use. Nothing in demo mode talks to the internet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from codex_pool.storage.codex_home import write_placeholder_auth
from codex_pool.cli.codex_setup import patch_config
from codex_pool.cli.project import ENTRY, project_root
from codex_pool.core.config import Config, ConfigError, default_config
from codex_pool.storage.config_file import load_config

DEMO_ACCOUNTS = ("alice", "bob", "carol")


def mitm_command(config: Config, config_path: Path | None, *, web: bool, upstream: str | None = None,
                 extra: list[str] | None = None) -> list[str]:
    """The argv that runs the proxy as configured."""
    binary = str(Path(sys.executable).with_name("mitmweb" if web else "mitmdump"))
    argv = [
        binary,
        "-s", str(project_root() / ENTRY),
        "--mode", f"reverse:{upstream or config.upstream}@{config.listen}",
        "--set", "connection_strategy=lazy",
        "--set", f"confdir={config.confdir}",
    ]
    if config_path is not None:
        argv += ["--set", f"pool_config={config_path}"]
    if web:
        argv += ["--set", "web_host=127.0.0.1", "--set", "web_open_browser=false"]
    return argv + list(extra or [])


def _read(config_path: Path | None) -> Config:
    if config_path is None:
        return default_config(project_root())
    return load_config(config_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--web", action="store_true", help="start mitmweb (flow inspection UI) instead of mitmdump")
    parser.add_argument("--demo", action="store_true", help="run offline against the simulated backend with sample accounts")
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: mitm.yaml in the project)")
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    config_path = args.config or (project_root() / "mitm.yaml" if (project_root() / "mitm.yaml").exists() else None)
    try:
        config = _read(config_path)
    except ConfigError as e:
        print(f"scripts/run: {e}", file=sys.stderr)
        return 2
    if args.demo:
        return run_demo(config, web=args.web, extra=extra)
    config.confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv_ = mitm_command(config, config_path.resolve() if config_path else None, web=args.web, extra=extra)
    print(f"codex-pool: proxy on http://{config.listen} → {config.upstream}; pool: {config.pool_dir}", flush=True)
    os.execv(argv_[0], argv_)
    return 0  # not reached


# ---- demo ----------------------------------------------------------------------------------------


def run_demo(config: Config, *, web: bool, extra: list[str]) -> int:
    """Everything the demo writes lives under data_dir/demo (its pool, its own data: ledger, state,
    events) and starts afresh each time: the user's ledger, state and event log are never touched."""
    demo_dir = config.data_dir / "demo"
    pool_dir, data_dir = demo_dir / "pool", demo_dir / "data"
    for old in (pool_dir, data_dir):
        if old.exists():
            shutil.rmtree(old)
    demo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    print("demo: starting the simulated ChatGPT backend with sample accounts", ", ".join(DEMO_ACCOUNTS), flush=True)
    fake = subprocess.Popen(
        [sys.executable, str(project_root() / "scripts" / "fake-chatgpt"), "--host", "127.0.0.1", "--port", "0",
         "--names", ",".join(DEMO_ACCOUNTS), "--pool-dir", str(pool_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    proxy = None

    def _terminate(signum, frame):  # SIGTERM: leave through `finally`, which stops both children
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        fake_url = _wait_for_line(fake, "listening at ", 30)
        demo_config = demo_dir / "mitm.yaml"
        demo_config.write_text(
            "# written by scripts/run --demo: the sample pool on the simulated backend\n"
            f"pool_dir: {pool_dir}\ndata_dir: {data_dir}\npolicy: {config.policy}\n"
            f"listen: {config.listen}\nupstream: {fake_url}\n"
        )
        argv = mitm_command(load_config(demo_config), demo_config, web=web, upstream=fake_url, extra=extra)
        proxy_url = f"http://{config.listen}"
        codex_home = write_demo_codex_home(demo_dir / "codex-home", proxy_url)
        print(f"demo: simulated backend at {fake_url}; starting the proxy on {proxy_url}", flush=True)
        proxy = subprocess.Popen(argv)
        threading.Thread(target=_tour, args=(proxy_url, codex_home, fake_url), daemon=True).start()
        return proxy.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for p in (proxy, fake):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def _wait_for_line(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulated backend exited before it was ready")
        if marker in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return line.split(marker, 1)[1].strip()
    raise RuntimeError("the simulated backend did not start in time")


def write_demo_codex_home(home: Path, proxy_url: str) -> Path:
    """A CODEX_HOME for the demo: what scripts/codex-setup --mode custom writes for a new home."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / "config.toml").write_text(patch_config("", "custom", proxy_url))
    auth = home / "auth.json"
    write_placeholder_auth(auth, time.time(), replace=True)
    return home


def _tour(proxy_url: str, codex_home: Path, fake_url: str) -> None:
    """Show selection and stickiness with a few requests once the proxy answers."""
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{proxy_url}/healthz", timeout=1).read()
            break
        except Exception:
            time.sleep(0.1)
    else:
        print("demo: the proxy did not come up; see its log above", flush=True)
        return
    print("\ndemo: three conversations, the first two asked twice — each stays on its account, new ones spread:", flush=True)
    for conv in ("demo-conversation-1", "demo-conversation-1", "demo-conversation-2", "demo-conversation-2", "demo-conversation-3"):
        try:
            served = _demo_turn(proxy_url, conv)
        except Exception as e:
            served = f"failed: {e}"
        print(f"demo:   {conv} → {served}", flush=True)
    codex = _installed_codex() or "codex"
    print(
        "\ndemo: the proxy keeps running. Point Codex at it:\n"
        f"  export CODEX_HOME={codex_home}\n"
        f"  {codex} exec --skip-git-repo-check 'hello'\n"
        f"  (config: {codex_home / 'config.toml'})\n"
        f"demo: accounts: curl {proxy_url}/admin/accounts    stop: Ctrl-C\n",
        flush=True,
    )


def _installed_codex() -> str | None:
    """The Codex CLI binary scripts/install-codex put in the cache, if any."""
    cache = Path(os.environ.get("CODEX_POOL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codex-pool")
    found = sorted(cache.glob("codex-*/node_modules/@openai/codex-linux-*/vendor/*/bin/codex"))
    return str(found[-1]) if found else shutil.which("codex")


def _demo_turn(proxy_url: str, conv: str) -> str:
    body = json.dumps({"model": "gpt-5.1-codex", "stream": True, "prompt_cache_key": conv,
                       "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}).encode()
    req = urllib.request.Request(
        f"{proxy_url}/backend-api/codex/responses", data=body, method="POST",
        headers={"content-type": "application/json", "accept": "text/event-stream", "session-id": conv,
                 "authorization": "Bearer client-placeholder"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("data:") and '"response.completed"' in line:
            event = json.loads(line[5:])
            usage = event["response"].get("usage", {})
            cached = usage.get("input_tokens_details", {}).get("cached_tokens", 0)
            account = _account_in(json.dumps(event["response"].get("output", [])))
            return f"{account} (input {usage.get('input_tokens')} tokens, {cached} from the prompt cache)"
    return "no completed response"


def _account_in(text: str) -> str:
    marker = "fake account "
    i = text.find(marker)
    return text[i + len(marker):].split(".", 1)[0].split('"', 1)[0] if i >= 0 else "?"


if __name__ == "__main__":
    sys.exit(main())
