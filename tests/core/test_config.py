from pathlib import Path

import pytest

from codex_pool.core.config import ConfigError, parse_config

BASE = Path("/etc/codex")


def test_defaults_resolve_against_the_files_folder():
    c = parse_config(None, BASE)
    assert c.pool_dir == Path("/etc/codex/pool") and c.data_dir == Path("/etc/codex/data")
    assert (c.policy, c.sticky_ttl_minutes, c.token_url) == ("usage_balanced", 120.0, "https://auth.openai.com/oauth/token")
    assert c.confdir == Path("/etc/codex/data/mitmproxy")


def test_values_are_taken():
    c = parse_config({"pool_dir": "/abs/pool", "policy": "round_robin", "sticky_ttl_minutes": 5, "admin_token": "x" * 20}, BASE)
    assert c.pool_dir == Path("/abs/pool") and c.policy == "round_robin" and c.sticky_ttl_seconds == 300
    assert "x" * 20 not in repr(c)


BAD = [
    ({"polcy": "round_robin"}, "unknown key polcy; allowed:"),
    ({"policy": "random"}, "policy: 'random' is not a policy; allowed: usage_balanced, round_robin, fill_first"),
    ({"sticky_ttl_minutes": "ten"}, "sticky_ttl_minutes: expected a number"),
    ({"sticky_ttl_minutes": True}, "sticky_ttl_minutes: expected a number"),
    ({"sticky_ttl_minutes": 0}, "sticky_ttl_minutes: 0 is out of range"),
    ({"token_url": "ftp://x"}, "token_url: 'ftp://x' is not an http(s) URL"),
    ({"pool_dir": ""}, "pool_dir: expected a non-empty string"),
    ({"pool_dir": 3}, "pool_dir: expected a non-empty string"),
    ({"listen": "8989"}, "listen: '8989' is not HOST:PORT"),
    ({"pool_scan_seconds": 30}, "pool_scan_seconds: 30 is out of range"),
    ({"admin_token": "short"}, "admin_token: too short"),
    ([1, 2], "must be a mapping"),
    ({"prices": {"m": {"input": 1}}}, "prices.m: missing output"),
    ({"prices": {"m": {"input": 1, "output": 2, "reasoning": 3}}}, "prices.m: unknown field reasoning"),
    ({"prices": {"m": {"input": "cheap", "output": 2}}}, "prices.m.input: expected a number"),
    ({"prices": [1]}, "prices: expected a mapping"),
    ({"ledger_flush_seconds": 0}, "ledger_flush_seconds: 0 is out of range"),
]


def test_prices_default_cached_input_to_input():
    c = parse_config({"prices": {"gpt-5.1-codex": {"input": 1.25, "output": 10}}}, BASE)
    assert c.prices == {"gpt-5.1-codex": {"input": 1.25, "output": 10.0, "cached_input": 1.25}}


@pytest.mark.parametrize("raw,message", BAD)
def test_bad_values_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_config(raw, BASE)
    assert message in str(e.value)
