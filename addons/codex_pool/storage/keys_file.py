"""The client keys file on disk (`client_keys` in mitm.yaml); what it may hold is core.client_keys.

- `load_keys(path)` reads and validates it (at most MAX_KEYS_BYTES); KeysError naming the file and
  the fix for anything else, `KeysFileMissing` (also a FileNotFoundError) when there is none yet.
- `update_keys(path, change)` is how keys are created, edited and revoked: under the file's lock
  (so two `scripts/keys` runs never lose an edit) it reads the file (or starts one with a new
  salt), applies `change`, validates the result exactly as a reader will and replaces the file
  atomically (0600, its folder created 0700). A failure anywhere leaves the file as it was.
- `new_key()` / `new_salt()`: the only sources of key material (`secrets`).

Blocking file I/O only.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from codex_pool.core.client_keys import (
    KEY_PREFIX,
    KeyFile,
    KeysError,
    keys_doc,
    looks_like_key,
    parse_keys,
)
from codex_pool.storage.files import FileLock, lock_path, write_atomic

MAX_KEYS_BYTES = 4 << 20  # ~10,000 keys fit in well under 4 MiB
FILE_MODE = 0o600
DIR_MODE = 0o700
SALT_BYTES = 32
LOCK_TIMEOUT = 10.0


class KeysFileMissing(KeysError, FileNotFoundError):
    """There is no keys file yet."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def new_key() -> str:
    """`cp-` + 43 URL-safe characters (256 random bits)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    assert looks_like_key(key)
    return key


def empty_keys() -> KeyFile:
    return KeyFile(new_salt(), [])


def load_keys(path: Path) -> KeyFile:
    """The keys in the file at `path`. Raises KeysFileMissing when there is none, KeysError (the
    file's name, the problem and what to do) when it cannot be used."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise KeysError(f"{path}: not a regular file; point client_keys in mitm.yaml at a keys file")
            data = f.read(MAX_KEYS_BYTES + 1)
    except FileNotFoundError:
        raise KeysFileMissing(f"{path}: no keys file yet; create the first key with scripts/keys create NAME") from None
    except IsADirectoryError:
        raise KeysError(f"{path}: is a folder; point client_keys in mitm.yaml at a file such as keys.json") from None
    except OSError as e:
        raise KeysError(f"{path}: cannot be read ({e.__class__.__name__}: {e.strerror or e}); "
                        "check its owner and permissions") from None
    if len(data) > MAX_KEYS_BYTES:
        raise KeysError(f"{path}: over {MAX_KEYS_BYTES >> 20} MiB, too big to be a keys file; "
                        "restore it from a backup or start afresh with scripts/keys create")
    return parse_keys_bytes(data, path)


def parse_keys_bytes(data: bytes, path: Path) -> KeyFile:
    """The keys in `data`, the content of the file at `path` (named in errors)."""
    hint = "fix the edit or restore the file; scripts/keys writes it"
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise KeysError(f"{path}: not UTF-8 text (byte {e.start}); {hint}") from None
    except json.JSONDecodeError as e:
        raise KeysError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}; {hint}") from None
    except RecursionError:
        raise KeysError(f"{path}: nested too deeply to be a keys file; {hint}") from None
    try:
        return parse_keys(doc)
    except KeysError as e:
        raise KeysError(f"{path}: {e}; {hint}") from None


def _encode(keyfile: KeyFile, path: Path) -> bytes:
    """The file's bytes, checked to read back as the same keys (never write what a reader rejects)."""
    data = (json.dumps(keys_doc(keyfile.salt, keyfile.keys), indent=2) + "\n").encode()
    if len(data) > MAX_KEYS_BYTES:
        raise KeysError(f"{path}: {len(data)} bytes would exceed the {MAX_KEYS_BYTES >> 20} MiB limit; "
                        "remove revoked keys (by hand) before adding more")
    parse_keys_bytes(data, path)
    return data


def _write(path: Path, keyfile: KeyFile) -> None:
    write_atomic(path, _encode(keyfile, path), mode=FILE_MODE)


def _lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return FileLock(path, timeout=LOCK_TIMEOUT)


def save_keys(path: Path, keyfile: KeyFile) -> None:
    """Replace the file at `path` with `keyfile` (validated first), under its lock. To change
    what is there, use `update_keys` (a save alone would drop another run's edit)."""
    path = Path(path)
    with _errors(path), _lock(path):
        _write(path, keyfile)


def update_keys(path: Path, change: Callable[[KeyFile], KeyFile], *, create: bool = False) -> KeyFile:
    """Read, `change` and write the keys file under its lock; returns what was written. With
    `create`, a missing file starts empty with a new salt (else KeysFileMissing). Whatever
    `change` raises propagates and nothing is written."""
    path = Path(path)
    with _errors(path), _lock(path):
        try:
            current = load_keys(path)
        except KeysFileMissing:
            if not create:
                raise
            current = empty_keys()
        new = change(current)
        _write(path, new)
        return new


@contextmanager
def _errors(path: Path) -> Iterator[None]:
    """OS errors (a lock held too long included) as KeysError naming the file and the fix."""
    try:
        yield
    except TimeoutError:
        raise KeysError(f"{path}: another scripts/keys is editing it (it holds {lock_path(path).name}); "
                        "try again when it is done") from None
    except KeysError:
        raise
    except OSError as e:
        raise KeysError(f"{path}: cannot be written ({e.__class__.__name__}: {e.strerror or e}); "
                        "check the folder's owner, permissions and free space") from None
