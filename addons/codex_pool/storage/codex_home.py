"""Writing the placeholder login of a client's CODEX_HOME (see core.client_home)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from codex_pool.core.client_home import PLACEHOLDER_ACCOUNT_ID, placeholder_client_auth


def write_placeholder_auth(path: Path, now: float, *, replace: bool, key: str | None = None) -> None:
    """Write the placeholder auth.json (0600), carrying the client `key` when given. With
    replace=False an existing file is an error (FileExistsError): a user's own login is never
    overwritten."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(placeholder_client_auth(now, key), f, indent=2)


def is_placeholder(path: Path) -> bool:
    """The auth.json at `path` is one of ours (a placeholder login), not the user's own."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and (doc.get("tokens") or {}).get("account_id") == PLACEHOLDER_ACCOUNT_ID
