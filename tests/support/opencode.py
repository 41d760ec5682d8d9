"""The real OpenCode CLI (npm `opencode-ai` 1.18.33, scripts/install-opencode) run offline against a
proxy: an isolated home and config written per test, and `opencode run` in a clean environment.

Offline recipe (checked in a network namespace with only loopback, and under strace: the only
connection is to the configured base URL):
- HOME and XDG_CONFIG_HOME / XDG_DATA_HOME / XDG_CACHE_HOME / XDG_STATE_HOME under the test's dir;
  PWD set to the working dir (OpenCode takes its project directory from $PWD, not getcwd);
- OPENCODE_DISABLE_MODELS_FETCH / _AUTOUPDATE / _SHARE / _LSP_DOWNLOAD = 1;
- the two providers' SDK packages (@ai-sdk/openai-compatible, @ai-sdk/openai) are bundled in the
  binary; the one thing OpenCode downloads by itself is `@opencode-ai/plugin`, installed with npm
  into every config dir that has no node_modules (or whose package.json names a dependency its
  package-lock.json lacks), in the background at each start. The manifest written here (package.json
  + package-lock.json naming it, an empty node_modules/) makes that check pass, so nothing is fetched.
  It only serves plugins written by the user, which these tests do not have.

What it sends (see the report in the issue): `compatible` → POST <origin>/v1/chat/completions,
`openai` → POST <origin>/backend-api/codex/responses; `Authorization: Bearer <api_key>` and
`x-session-id` = `x-session-affinity` = the OpenCode session id on every request, a separate title
request (no tools) on a session's first turn unless `title=` is given. `opencode run` wraps each
message argument that contains a space in double quotes before sending it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = "1.18.33"
MODEL = "gpt-5.1-codex"
PATHS = {"compatible": "/v1", "openai": "/backend-api/codex"}
NPM = {"compatible": "@ai-sdk/openai-compatible", "openai": "@ai-sdk/openai"}
OFFLINE_ENV = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
}


@functools.cache
def opencode_bin() -> tuple[str | None, str]:
    """(path, "") of the OpenCode binary, or (None, reason): $CODEX_POOL_OPENCODE_BIN, else what
    scripts/install-opencode installs (or finds) in the cache."""
    found = os.environ.get("CODEX_POOL_OPENCODE_BIN", "")
    if not found:
        try:
            done = subprocess.run([str(ROOT / "scripts" / "install-opencode")], check=False, capture_output=True,
                                  text=True, timeout=600, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"scripts/install-opencode could not run: {e}"
        found = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
        if not found:
            return None, f"OpenCode could not be installed: {done.stderr.strip()[-300:]}"
    if not Path(found).is_file() or not os.access(found, os.X_OK):
        return None, f"the OpenCode binary {found} is missing or not executable"
    return found, ""


class OpenCodeHome:
    """An isolated OpenCode installation state under `root` whose one provider points at `proxy_url`
    (an origin such as http://127.0.0.1:8989): kind "compatible" → `<origin>/v1` through
    @ai-sdk/openai-compatible (Chat Completions), "openai" → `<origin>/backend-api/codex` through
    @ai-sdk/openai (Responses API). `run()` runs `opencode run` there, offline."""

    def __init__(self, root: Path, proxy_url: str, kind: str = "openai", *, api_key: str = "unused",
                 model: str = MODEL, provider_id: str = "codex-pool", binary: str | None = None,
                 permission: dict | None = None, extra_config: dict | None = None,
                 extra_env: dict[str, str] | None = None):
        if kind not in PATHS:
            raise ValueError(f"kind must be one of {sorted(PATHS)}, not {kind!r}")
        self.root, self.kind, self.model, self.provider_id = Path(root), kind, model, provider_id
        self.base_url = proxy_url.rstrip("/") + PATHS[kind]
        self.binary = binary
        self.extra_env = dict(extra_env or {})  # e.g. NODE_EXTRA_CA_CERTS for a proxy's https side
        self.home = self.root / "home"
        self.config_dir = self.root / "config" / "opencode"
        self.data_dir, self.cache_dir, self.state_dir = self.root / "data", self.root / "cache", self.root / "state"
        self.work = self.root / "work"
        for d in (self.home, self.config_dir / "node_modules", self.data_dir, self.cache_dir, self.state_dir,
                  self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.config = {
            "$schema": "https://opencode.ai/config.json",
            "autoupdate": False,
            "share": "disabled",
            "model": f"{provider_id}/{model}",
            "provider": {
                provider_id: {
                    "npm": NPM[kind],
                    "name": provider_id,
                    "options": {"baseURL": self.base_url, "apiKey": api_key},
                    "models": {model: {"name": model}},
                }
            },
        }
        if permission is not None:
            self.config["permission"] = permission
        self.config.update(extra_config or {})
        (self.config_dir / "opencode.json").write_text(json.dumps(self.config, indent=2) + "\n")
        # keeps OpenCode from npm-installing @opencode-ai/plugin here at every start (see module doc)
        deps = {"@opencode-ai/plugin": VERSION}
        (self.config_dir / "package.json").write_text(json.dumps({"dependencies": deps}) + "\n")
        (self.config_dir / "package-lock.json").write_text(
            json.dumps({"lockfileVersion": 3, "packages": {"": {"dependencies": deps}}}) + "\n")

    def env(self) -> dict[str, str]:
        """The clean offline environment: no proxies, no inherited OPENCODE_* / XDG_* settings."""
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith(("OPENCODE", "XDG_"))}
        env.update(OFFLINE_ENV)
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.config_dir.parent),
                    "XDG_DATA_HOME": str(self.data_dir), "XDG_CACHE_HOME": str(self.cache_dir),
                    "XDG_STATE_HOME": str(self.state_dir), "PWD": str(self.work), "NO_COLOR": "1"})
        env.update(self.extra_env)
        return env

    def run(self, prompt: str, continue_: bool = False, timeout: float = 120, *, json_events: bool = False,
            title: str | None = None, auto: bool = False, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`opencode run -m <provider>/<model> [-c] [--format json] [--title T] [--auto] -- <prompt>`.
        Answer text on stdout (or JSON events, one per line, with `json_events`); errors end in
        `Error: <message>` on stderr and exit status 1. A permission that would be asked is
        auto-rejected in `run` unless `auto` (bash is allowed by default). On timeout the process
        group is killed and subprocess.TimeoutExpired raised."""
        binary = self.binary
        if binary is None:
            binary, reason = opencode_bin()
            if binary is None:
                raise RuntimeError(reason)
        argv = [binary, "run", "-m", f"{self.provider_id}/{self.model}"]
        if continue_:
            argv.append("-c")
        if json_events:
            argv += ["--format", "json"]
        if title is not None:
            argv += ["--title", title]
        if auto:
            argv.append("--auto")
        argv += [*args, "--", prompt]
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the tool shells it started too
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
