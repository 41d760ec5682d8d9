import json
import random
from pathlib import Path

import httpx

from codex_pool.core.auth_file import parse_auth
from codex_pool.upstream.usage_poller import PAUSE_AFTER_403, UsagePoller
from tests.support.tokens import make_auth

NOW = 1_800_000_000.0


def acct(name="alice"):
    return parse_auth(json.dumps(make_auth(f"acct-{name}")).encode(), Path(f"/pool/{name}.json"))


def poller(handler, interval=300.0, seed=1):
    return UsagePoller(httpx.AsyncClient(transport=httpx.MockTransport(handler)), "https://chatgpt.test", interval,
                       random.Random(seed))


def test_first_polls_are_spread_over_the_interval():
    p = poller(lambda r: httpx.Response(200))
    names = [f"a{i}" for i in range(20)]
    p.schedule(names, NOW)
    times = sorted(p.next_poll(n) - NOW for n in names)
    assert 0 <= times[0] and times[-1] <= 300
    assert times[-1] - times[0] > 150  # not a burst
    assert p.due(NOW) == [] or len(p.due(NOW)) < 3
    p.schedule(names[:5], NOW)
    assert p.next_poll("a10") is None  # gone accounts are dropped


async def test_ok_gives_rate_limits_and_sends_the_accounts_credentials():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"plan_type": "plus", "rate_limit": {"primary_window": {
            "used_percent": 42, "limit_window_seconds": 18000, "reset_at": NOW + 100}}})

    p = poller(handler)
    a = acct()
    result = await p.poll(a, NOW)
    assert result.kind == "ok" and result.limits.primary.used_percent == 42
    assert seen[0].url.path == "/backend-api/wham/usage"
    assert seen[0].headers["authorization"] == f"Bearer {a.access_token}"
    assert seen[0].headers["chatgpt-account-id"] == "acct-alice"
    assert 270 <= p.next_poll("alice") - NOW <= 330


async def test_401_asks_for_a_refresh_403_pauses_5xx_changes_nothing():
    status = {"code": 401}
    p = poller(lambda r: httpx.Response(status["code"]))
    a = acct()
    p.schedule(["alice"], NOW)
    assert (await p.poll(a, NOW)).kind == "unauthorized" and p.paused_until("alice") is None
    status["code"] = 503
    assert (await p.poll(a, NOW)).kind == "error" and p.paused_until("alice") is None
    status["code"] = 403
    assert (await p.poll(a, NOW)).kind == "forbidden"
    assert p.paused_until("alice") == NOW + PAUSE_AFTER_403
    assert p.due(NOW + 1000) == []  # paused, although its next poll is due
    p.resume("alice")
    assert p.due(NOW + 1000) == ["alice"]


async def test_network_error_is_harmless():
    def boom(request):
        raise httpx.ReadTimeout("slow")

    assert (await poller(boom).poll(acct(), NOW)).kind == "error"
