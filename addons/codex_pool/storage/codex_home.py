"""Writing the placeholder login of a client's CODEX_HOME (see core.client_home)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from codex_pool.core.client_home import placeholder_client_auth


def write_placeholder_auth(path: Path, now: float, *, replace: bool) -> None:
    """Write the placeholder auth.json (0600). With replace=False an existing file is an error
    (FileExistsError): a user's own login is never overwritten."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(placeholder_client_auth(now), f, indent=2)
