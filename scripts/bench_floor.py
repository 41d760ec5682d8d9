"""bench-proxy's floor: the least any credential-swapping addon must do, for comparison.

    .venv/bin/python scripts/bench-proxy --entry scripts/bench_floor.py --only small-c8,burst-c16

run as bench-proxy's "ours" target, it replaces the client's Authorization and ChatGPT-Account-ID
with the first pool account's (read from the same `pool_config` codex-pool reads), answers the
benchmark's /healthz probe and streams SSE answers like the plain target — nothing else: no
routing, no accounting, no failover. Its ratio to plain mitmdump is what a pool proxy costs before
it does any work of its own. Not for use as a proxy: every request goes out on one account.
"""

import json
from pathlib import Path

import yaml
from mitmproxy import ctx, http


class CredentialSwap:
    def __init__(self) -> None:
        self.credentials: tuple[str, str] | None = None
        self.accounts = 0

    def load(self, loader) -> None:
        loader.add_option("pool_config", str, "", "codex-pool's mitm.yaml (its pool_dir names the accounts)")

    def configure(self, updated: set[str]) -> None:
        if "pool_config" in updated and ctx.options.pool_config:
            config_path = Path(ctx.options.pool_config)
            pool_dir = Path(yaml.safe_load(config_path.read_text())["pool_dir"])
            pool_dir = pool_dir if pool_dir.is_absolute() else config_path.parent / pool_dir
            files = sorted(pool_dir.glob("*.json"))
            tokens = json.loads(files[0].read_text())["tokens"]
            self.credentials, self.accounts = (tokens["access_token"], tokens["account_id"]), len(files)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path == "/healthz":  # bench-proxy waits for every account to be usable
            flow.response = http.Response.make(200, json.dumps({"usable": self.accounts}).encode())
        elif self.credentials is not None:
            flow.request.headers["authorization"] = "Bearer " + self.credentials[0]
            flow.request.headers["chatgpt-account-id"] = self.credentials[1]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


addons = [CredentialSwap()]
