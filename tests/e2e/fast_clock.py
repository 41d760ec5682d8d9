"""Loaded as a second mitmdump script by the token tests: the proxy's background clocks, made fast
and observable, so the tests wait for events instead of sleeping through the product's intervals.

- the token keeper checks every 0.1 s (lifecycle.TOKEN_CHECK_SECONDS, 5 s) and logs each check as
  "codex-pool-test: token check <n>", so a test can wait for checks to have happened;
- a transient refresh failure is retried after 0.5 s instead of 5 s (refresh_policy.backoff's base);
- the usage poller looks for due polls every 0.1 s (lifecycle.USAGE_POLL_TICK_SECONDS, 1 s); how
  often an account is polled is still `usage_poll_seconds`.

If the names adjusted here are gone, loading fails and mitmdump exits: the test then fails with
this script's error in the proxy output, instead of silently running on the product's clock.
"""

import logging

from codex_pool.core import refresh_policy
from codex_pool.mitm import lifecycle
from codex_pool.upstream.tokens import TokenService

CHECK_SECONDS = 0.1
RETRY_BASE_SECONDS = 0.5
USAGE_TICK_SECONDS = 0.1

log = logging.getLogger("codex_pool")

for name in ("TOKEN_CHECK_SECONDS", "USAGE_POLL_TICK_SECONDS"):
    if not isinstance(getattr(lifecycle, name, None), float):
        raise RuntimeError(f"fast_clock.py: codex_pool.mitm.lifecycle.{name} is gone; update this test hook")
lifecycle.TOKEN_CHECK_SECONDS = CHECK_SECONDS
lifecycle.USAGE_POLL_TICK_SECONDS = USAGE_TICK_SECONDS

_backoff = refresh_policy.backoff


def _fast_backoff(failures: int, base: float = RETRY_BASE_SECONDS, cap: float = 300.0) -> float:
    return _backoff(failures, base, cap)


refresh_policy.backoff = _fast_backoff

_due = TokenService.due
_checks = 0


def _counted_due(self, now):
    global _checks
    due = _due(self, now)
    _checks += 1
    log.info("codex-pool-test: token check %d", _checks)
    return due


TokenService.due = _counted_due

addons: list = []
