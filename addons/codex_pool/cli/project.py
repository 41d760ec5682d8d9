"""Where the project lives (addons/pool.py, mitm.yaml, scripts/), for the command-line tools."""

from __future__ import annotations

import os
import time
from pathlib import Path

ENTRY = Path("addons") / "pool.py"


def project_root() -> Path:
    """$CODEX_POOL_HOME when set; else the nearest folder holding addons/pool.py above the working
    directory (the scripts run from the project folder), else above this package (a source or
    editable install). Raises SystemExit saying what to do when there is none."""
    env = os.environ.get("CODEX_POOL_HOME")
    if env:
        root = Path(env).expanduser().resolve()
        if (root / ENTRY).is_file():
            return root
        raise SystemExit(f"CODEX_POOL_HOME={env} does not hold {ENTRY}; point it at the codex-pool folder")
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / ENTRY).is_file():
                return folder
    raise SystemExit(f"cannot find the codex-pool folder (one holding {ENTRY}); run from inside it, "
                     "or set CODEX_POOL_HOME to it")


def load_settings(path: str | Path | None, root: Path):
    """The settings a command-line tool works with: `--config PATH` when given, else the project's
    mitm.yaml, else the built-in defaults. Raises ConfigError naming the file and the problem."""
    from codex_pool.core.config import default_config
    from codex_pool.storage.config_file import load_config
    if path is not None:
        return load_config(Path(path))
    default = root / "mitm.yaml"
    return load_config(default) if default.exists() else default_config(root)


def when_utc(ts: float | None) -> str:
    """A unix time as tools print it: 2026-12-01 10:36 UTC (or "unknown")."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "unknown"
