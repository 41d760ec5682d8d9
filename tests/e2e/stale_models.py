"""Loaded as a second mitmdump script: every cached models list counts as stale at once, so a test
sees the background refresh without waiting two minutes (mitm/models_cache.py)."""

from codex_pool.mitm import models_cache

if not isinstance(getattr(models_cache, "MODELS_CACHE_SECONDS", None), float):
    raise RuntimeError("stale_models.py: codex_pool.mitm.models_cache.MODELS_CACHE_SECONDS is gone; update this hook")
models_cache.MODELS_CACHE_SECONDS = 0.0
