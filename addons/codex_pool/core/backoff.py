"""The one exponential backoff: base, 2×base, 4×base, … capped (account cooldowns, refresh retries)."""

from __future__ import annotations


def exponential(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after `failures` consecutive failures (1 → base)."""
    return min(cap, base * 2 ** max(0, failures - 1))
