"""File-system helpers shared by the modules that write files atomically."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op on filesystems that cannot sync a directory)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def mtime_ns(path: Path) -> int | None:
    """The file's modification time, or None when it cannot be read."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
