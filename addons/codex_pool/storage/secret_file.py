"""The key for hashing conversation ids, kept in data_dir so hashes are stable across restarts."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("codex_pool")

NAME = "conversation-hash.key"


def load_secret(data_dir: Path) -> bytes:
    path = data_dir / NAME
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    key = secrets.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    except OSError as e:
        log.warning("codex-pool: cannot write %s (%s); conversation hashes will change on restart", path, e)
    return key
