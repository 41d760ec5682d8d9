"""Fail closed while codex-pool is not loaded.

mitmproxy reloads `addons/pool.py` when the file changes. When the new file does not load (a
syntax error, an import error, an exception at load), mitmproxy drops the script's addons and goes
on proxying: every request would reach the upstream unchanged, with the client's own credentials.

The guard is one small addon that the pipeline adds to mitmproxy's own addon chain (not under the
script), so it outlives every reload. Each loaded pipeline attaches itself in `running` and detaches
in `done`; while none is attached, the guard answers every request 503 locally, naming the load
error and the file, and nothing is forwarded. mitmproxy reloads the file once it changes again, and
serving resumes by itself when it loads. (A load failure at start-up still ends mitmdump: mitmproxy
exits on errors logged during start-up.)
"""

from __future__ import annotations

import logging

from mitmproxy import http

from codex_pool.core.bodies import error_body
from codex_pool.core.redact import redact
from codex_pool.mitm.flows import drop_client_credentials

GUARD_NAME = "codex-pool-guard"
SCRIPT_LOGGER = "mitmproxy.addons.script"  # where mitmproxy reports a script that failed to load
RETRY_AFTER_SECONDS = 5


class ReloadGuard:
    def __init__(self) -> None:
        self.name = GUARD_NAME  # mitmproxy's addon name: one guard per process
        self.attached: list[object] = []
        self.load_error: str | None = None
        self._handler = _LoadErrors(self)
        logging.getLogger(SCRIPT_LOGGER).addHandler(self._handler)

    def attach(self, pipeline: object) -> None:
        if not any(p is pipeline for p in self.attached):
            self.attached.append(pipeline)
        self.load_error = None

    def detach(self, pipeline: object) -> None:
        self.attached = [p for p in self.attached if p is not pipeline]

    @property
    def serving(self) -> bool:
        return bool(self.attached)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self.attached:
            flow.request.stream = False  # nothing leaves before `request` answers it

    def request(self, flow: http.HTTPFlow) -> None:
        if self.attached or flow.response is not None:
            return
        drop_client_credentials(flow.request.headers)  # answered here: nothing of the client's stays on the flow
        flow.response = http.Response.make(
            503, error_body("server_error", "codex_pool_not_loaded", self.message()),
            {"content-type": "application/json", "cache-control": "no-store", "retry-after": str(RETRY_AFTER_SECONDS)})
        flow.comment = "codex-pool not loaded: answered locally, nothing forwarded"
        flow.marked = ":no_entry:"

    def message(self) -> str:
        why = self.load_error or "codex-pool's addon is not loaded"
        return (f"{why}. Nothing is forwarded while it is not loaded (the proxy would send requests upstream with "
                "your own credentials); fix the file and the proxy picks it up within a second.")

    def done(self) -> None:
        logging.getLogger(SCRIPT_LOGGER).removeHandler(self._handler)


def ensure(master) -> ReloadGuard:
    """The process's guard, added at the end of mitmproxy's addon chain the first time."""
    guard = master.addons.get(GUARD_NAME)
    if guard is None:
        guard = ReloadGuard()
        master.addons.add(guard)
    return guard


def describe_load_error(path: str, exc: BaseException) -> str:
    """`<file> failed to load: <Type>: <message> (line N)`, without anything token-like."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    text = f"{type(exc).__name__}: {getattr(exc, 'msg', None) or exc}"
    return redact(f"{path} failed to load: {text}{f' (line {line})' if line else ''}")[:500]


class _LoadErrors(logging.Handler):
    """Keeps what mitmproxy logged about the script that failed to load (`error in script <path>`)."""

    def __init__(self, guard: ReloadGuard):
        super().__init__(logging.ERROR)
        self.guard = guard

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if message.startswith("error in script ") and record.exc_info and record.exc_info[1] is not None:
                self.guard.load_error = describe_load_error(message[len("error in script "):], record.exc_info[1])
        except Exception:  # a logging handler never raises into mitmproxy's loader
            pass
