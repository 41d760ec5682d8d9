"""All of codex-pool's addons as one entry in mitmproxy's addon chain.

mitmproxy walks every addon of its chain on every event (measured on 12.3: about 1.3 µs per addon
per event, whether the addon implements the hook or not; a request has at least four events). So
the addons listed in addons/pool.py sit behind one `Pipeline`, which calls, for each hook,
exactly the parts that implement it, in list order — the calls mitmproxy would make, without
walking the others. Each part stays a small addon class that owns its hooks and state; the
pipeline owns nothing but the order. Parts' options and commands are registered in `load`. While
loaded, the pipeline is attached to the reload guard (mitm/reload_guard.py), which answers every
request itself when a reload of addons/pool.py fails.

Each part is called as mitmproxy would call a separate addon: an exception is logged and the
next part still runs (mitmproxy's `safecall`; OptionsError and AddonHalt pass through), and a
hook that returns an awaitable — the parts' way to do rare slow work, such as a token refresh,
without costing every flow a coroutine — is awaited before the next part runs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence

from mitmproxy import exceptions

from codex_pool.mitm import reload_guard
from codex_pool.mitm.flows import describe_error

log = logging.getLogger("codex_pool")

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error",
              "websocket_start", "websocket_message", "websocket_end")
LIFECYCLE_HOOKS = ("configure",)  # load, running, done: see Pipeline


class Pipeline:
    def __init__(self, parts: Sequence[object]):
        self.parts = list(parts)
        for name in FLOW_HOOKS + LIFECYCLE_HOOKS:
            calls = [getattr(p, name) for p in self.parts if callable(getattr(p, name, None))]
            if calls:
                setattr(self, name, _fan_out(calls))
        self._parts_running = _fan_out([p.running for p in self.parts if callable(getattr(p, "running", None))])
        self._parts_done = _fan_out([p.done for p in self.parts if callable(getattr(p, "done", None))])
        self._master = None

    def load(self, loader) -> None:
        """Each part's load (options, the content view), then its mitmproxy commands: mitmproxy
        collects commands only from the addons it walks, and it walks only the pipeline."""
        self._master = loader.master
        for part in self.parts:
            load = getattr(part, "load", None)
            if callable(load):
                load(loader)
            loader.master.commands.collect_commands(part)

    def running(self):
        """The parts start, then the pipeline tells the reload guard that codex-pool serves."""
        result = self._parts_running()
        if self._master is not None:
            reload_guard.ensure(self._master).attach(self)
        return result

    def done(self):
        """Unloaded (a reload, or shutdown): the guard answers for the pool until a pipeline is back."""
        guard = self._master.addons.get(reload_guard.GUARD_NAME) if self._master is not None else None
        if guard is not None:
            guard.detach(self)
        return self._parts_done()

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(type(p).__name__ for p in self.parts)})"


def _fan_out(calls: list[Callable]) -> Callable:
    if not calls:
        return lambda *args: None
    if len(calls) == 1:
        return calls[0]  # nothing to fan out: mitmproxy calls the part itself
    if any(inspect.iscoroutinefunction(c) for c in calls):
        async def async_hook(*args):
            for call in calls:
                await _await(_call(call, args), call)
        return async_hook

    def hook(*args):
        for i, call in enumerate(calls):
            result = _call(call, args)
            if result is not None and inspect.isawaitable(result):
                return _rest(result, call, calls[i + 1:], args)  # mitmproxy awaits it
        return None
    return hook


def _call(call: Callable, args: tuple):
    try:
        return call(*args)
    except (exceptions.OptionsError, exceptions.AddonHalt):
        raise
    except Exception as e:
        log.error("codex-pool: %s failed: %s", _name(call), describe_error(e))
        return None


async def _await(result, call: Callable) -> None:
    if result is None or not inspect.isawaitable(result):
        return
    try:
        await result
    except Exception as e:
        log.error("codex-pool: %s failed: %s", _name(call), describe_error(e))


async def _rest(pending, call: Callable, rest: list[Callable], args: tuple) -> None:
    await _await(pending, call)
    for later in rest:
        await _await(_call(later, args), later)


def _name(call: Callable) -> str:
    owner = getattr(call, "__self__", None)
    return f"{type(owner).__name__}.{call.__name__}" if owner is not None else getattr(call, "__name__", repr(call))
