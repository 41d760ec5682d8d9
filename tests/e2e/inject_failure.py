"""Loaded as a second mitmdump script by the fail-closed test: makes routing raise."""

from mitmproxy import ctx


class InjectFailure:
    def running(self):
        pipeline = ctx.master.addons.get("pipeline")
        pool = next(part.pool for part in pipeline.parts if hasattr(part, "pool"))  # the Pool they all share

        def broken(*args, **kwargs):
            raise RuntimeError("injected failure for the fail-closed test")

        pool.router.route = broken


addons = [InjectFailure()]
