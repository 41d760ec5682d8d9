"""Where the project lives (addons/pool.py, mitm.yaml, scripts/), for the command-line tools."""

from __future__ import annotations

import os
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
