"""Loaded as a second mitmdump script by the fail-closed test: makes routing raise."""

from mitmproxy import ctx


class InjectFailure:
    def running(self):
        pool = ctx.master.addons.get("routing").pool  # the Pool every codex-pool addon shares

        def broken(*args, **kwargs):
            raise RuntimeError("injected failure for the fail-closed test")

        pool.router.route = broken


addons = [InjectFailure()]
