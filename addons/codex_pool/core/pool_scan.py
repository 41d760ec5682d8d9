"""What one scan of the pool folder found (filled by storage.pool_folder, read by the registry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codex_pool.core.auth_file import Account


@dataclass(frozen=True)
class Problem:
    """A pool file that cannot be served, and why."""

    name: str
    path: Path
    reason: str


@dataclass
class PoolScan:
    """What a scan found: served accounts by name, bad files, duplicates, and what is new."""

    accounts: dict[str, Account] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)
    duplicates: dict[str, str] = field(default_factory=dict)  # shadowed name -> served name
    shadowed: dict[str, Account] = field(default_factory=dict)  # shadowed name -> its parsed file
    changed: bool = False  # anything differs from the previous scan
    new_problems: list[Problem] = field(default_factory=list)  # to report (once per file version)
    new_duplicates: list[tuple[str, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    folder_error: str | None = None
