"""The addon's own settings: `mitm.yaml`, parsed and validated.

Every key has a default; unknown keys, wrong types and bad values raise `ConfigError` naming the
key and what is allowed. Relative paths resolve against the folder of the file they came from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


POLICIES = ("usage_balanced", "round_robin", "fill_first")
CLIENT_QUOTAS = ("pool", "account")


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and the fix."""


@dataclass(frozen=True)
class Config:
    pool_dir: Path
    data_dir: Path
    policy: str = "usage_balanced"
    sticky_ttl_minutes: float = 120.0
    token_url: str = "https://auth.openai.com/oauth/token"
    listen: str = "127.0.0.1:8989"
    upstream: str = "https://chatgpt.com"
    pool_scan_seconds: float = 2.0
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    max_attempts: int = 3
    repin_after_minutes: float = 10.0
    cooldown_base_seconds: float = 5.0
    cooldown_max_seconds: float = 300.0
    usage_limit_default_minutes: float = 60.0
    event_log_max_mb: float = 5.0
    refresh_margin_minutes: float = 60.0
    client_id: str = "app_EMoamEEZ73f0CkXaXp7hrann"
    usage_poll_seconds: float = 300.0
    ledger_flush_seconds: float = 2.0
    ledger_retention_days: float = 400.0
    inspect_body_limit_kb: int = 512
    first_byte_timeout_seconds: float = 120.0  # no answer from upstream this long: cut, cool, client retries elsewhere
    stream_idle_timeout_seconds: float = 240.0  # a started stream silent this long: ended like a cut stream
    prices: dict = dataclasses.field(default_factory=dict)  # model -> {input, cached_input, output} $/1M tokens
    client_quota: str = "pool"  # what answers' x-codex-* headers and codex.rate_limits events show clients
    client_keys: Path | None = None  # the keys file (scripts/keys); None: no client keys, loopback only
    source: Path | None = None  # the file this came from, None for built-in defaults

    @property
    def sticky_ttl_seconds(self) -> float:
        return self.sticky_ttl_minutes * 60.0

    @property
    def repin_after_seconds(self) -> float:
        return self.repin_after_minutes * 60.0

    @property
    def confdir(self) -> Path:
        """mitmproxy's own confdir (CA, config.yaml) kept apart from ~/.mitmproxy."""
        return self.data_dir / "mitmproxy"


# key -> (default, validator). Paths are resolved separately.
_DEFAULT_POOL_DIR = "pool"
_DEFAULT_DATA_DIR = "data"


def _number(key: str, value: Any, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{key}: {value!r} is out of range; allowed {minimum:g} to {maximum:g}")
    return float(value)


def _integer(key: str, value: Any, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{key}: {value!r} is out of range; allowed {minimum} to {maximum}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _url(key: str, value: Any) -> str:
    text = _string(key, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key}: {text!r} is not an http(s) URL; e.g. https://auth.openai.com/oauth/token")
    return text


def _host_port(key: str, value: Any) -> str:
    text = _string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {text!r} is not HOST:PORT; e.g. 127.0.0.1:8989")
    return text


def _policy(key: str, value: Any) -> str:
    if value not in POLICIES:
        raise ConfigError(f"{key}: {value!r} is not a policy; allowed: {', '.join(POLICIES)}")
    return value


def _optional_secret(key: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _string(key, value)
    if len(text) < 16:
        raise ConfigError(f"{key}: too short; use at least 16 random characters (or null to allow loopback clients only)")
    return text


_VALIDATORS = {
    "pool_dir": _string,
    "data_dir": _string,
    "policy": _policy,
    "sticky_ttl_minutes": lambda k, v: _number(k, v, minimum=1, maximum=60 * 24 * 30),
    "token_url": _url,
    "listen": _host_port,
    "upstream": _url,
    "pool_scan_seconds": lambda k, v: _number(k, v, minimum=0.2, maximum=5),
    "admin_token": _optional_secret,
    "max_attempts": lambda k, v: _integer(k, v, minimum=1, maximum=10),
    "repin_after_minutes": lambda k, v: _number(k, v, minimum=0, maximum=60 * 24),
    "cooldown_base_seconds": lambda k, v: _number(k, v, minimum=0.1, maximum=3600),
    "cooldown_max_seconds": lambda k, v: _number(k, v, minimum=1, maximum=86400),
    "usage_limit_default_minutes": lambda k, v: _number(k, v, minimum=1, maximum=60 * 24 * 30),
    "event_log_max_mb": lambda k, v: _number(k, v, minimum=0.1, maximum=1024),
    "refresh_margin_minutes": lambda k, v: _number(k, v, minimum=1, maximum=60 * 24 * 7),
    "client_id": _string,
    "usage_poll_seconds": lambda k, v: _number(k, v, minimum=0, maximum=86400),
    "ledger_flush_seconds": lambda k, v: _number(k, v, minimum=0.1, maximum=60),
    "ledger_retention_days": lambda k, v: _number(k, v, minimum=1, maximum=36500),
    "inspect_body_limit_kb": lambda k, v: _integer(k, v, minimum=0, maximum=1 << 20),
    "first_byte_timeout_seconds": lambda k, v: _number(k, v, minimum=0, maximum=3600),
    "stream_idle_timeout_seconds": lambda k, v: _number(k, v, minimum=0, maximum=3600),
    "prices": lambda k, v: _prices(k, v),
    "client_quota": lambda k, v: _choice(k, v, CLIENT_QUOTAS),
    "client_keys": lambda k, v: None if v is None else _string(k, v),
}


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


PRICE_FIELDS = ("input", "cached_input", "output")


def _prices(key: str, value: Any) -> dict:
    """model -> {input, cached_input, output}: US dollars per million tokens."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of model: {{input, cached_input, output}}, got {value!r}")
    out = {}
    for model, row in value.items():
        if not isinstance(model, str) or not isinstance(row, dict):
            raise ConfigError(f"{key}.{model}: expected {{input, cached_input, output}} in dollars per million tokens")
        unknown = sorted(set(row) - set(PRICE_FIELDS))
        if unknown:
            raise ConfigError(f"{key}.{model}: unknown field {', '.join(map(str, unknown))}; allowed: {', '.join(PRICE_FIELDS)}")
        missing = [f for f in ("input", "output") if f not in row]
        if missing:
            raise ConfigError(f"{key}.{model}: missing {', '.join(missing)}")
        prices = {f: _number(f"{key}.{model}.{f}", row[f], minimum=0, maximum=1e6) for f in row}
        prices.setdefault("cached_input", prices["input"])
        out[model] = prices
    return out


def parse_config(raw: Any, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed YAML document (None or a mapping) into a Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the file must be a mapping of key: value, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _VALIDATORS)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_VALIDATORS))}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _VALIDATORS[key](key, value)
    if values.get("cooldown_max_seconds", 300.0) < values.get("cooldown_base_seconds", 5.0):
        raise ConfigError("cooldown_max_seconds: must not be below cooldown_base_seconds")
    values["pool_dir"] = (base_dir / values.get("pool_dir", _DEFAULT_POOL_DIR)).resolve()
    values["data_dir"] = (base_dir / values.get("data_dir", _DEFAULT_DATA_DIR)).resolve()
    if values.get("client_keys") is not None:
        values["client_keys"] = (base_dir / values["client_keys"]).resolve()
    return Config(**values, source=source)


def default_config(base_dir: Path) -> Config:
    """Built-in defaults, with paths relative to base_dir (used when no mitm.yaml exists)."""
    return parse_config({}, base_dir.resolve())
