"""The serving-state document on disk (data_dir/state.json): TinyDB's file format, written
atomically (blocking: call from a worker thread)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from codex_pool.storage.ledger_store import AtomicJSONStorage


class StateFile:
    """One TinyDB document, written atomically; an unreadable file is moved aside, never lost."""

    def __init__(self, path: Path):
        self.path = path
        self._last: dict[str, Any] | None = None  # the last document written, without saved_at

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        """(document or None, warning or None)."""
        if not self.path.exists():
            return None, None
        try:
            data = AtomicJSONStorage(self.path).read() or {}
            docs = list((data.get("state") or {}).values())
            if docs and not isinstance(docs[0], dict):
                raise ValueError("state document is not an object")
            return (dict(docs[0]) if docs else None), None
        except Exception as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                os.replace(self.path, aside)
            except OSError:
                return None, f"{self.path} cannot be read ({e}) nor moved aside; starting without saved state"
            return None, f"{self.path} could not be read ({type(e).__name__}); moved it to {aside} and started fresh"

    def save(self, doc: dict[str, Any]) -> bool:
        """Write the document (one atomic write, TinyDB's file format) if it changed. Blocking."""
        same = {k: v for k, v in doc.items() if k != "saved_at"}  # compared as objects: no second encoding
        if same == self._last:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        AtomicJSONStorage(self.path).write({"state": {"1": doc}})
        self._last = same
        return True
