"""Reading mitm.yaml from disk; parsing and validation live in core.config."""

from __future__ import annotations

from pathlib import Path

import yaml

from codex_pool.core.config import Config, ConfigError, parse_config

MAX_CONFIG_CHARS = 1 << 20


def load_config(path: Path) -> Config:
    """Read and validate a mitm.yaml. Raises ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_CHARS + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; create it (see the shipped mitm.yaml) or point pool_config at it")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e.__class__.__name__}: {e})")
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: {len(text)} characters; a settings file is a few KB (limit {MAX_CONFIG_CHARS})")
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a settings file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}")
    try:
        return parse_config(raw, path.parent.resolve(), source=path.resolve())
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
