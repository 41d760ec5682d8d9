"""storage/keys_file.py: the client keys file on disk — 0600 and atomic, edits under a lock, bad
files named and left untouched, a size cap."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from codex_pool.core.client_keys import (
    ClientKey,
    KeyFile,
    KeysError,
    key_digest,
    looks_like_key,
    parse_keys,
)
from codex_pool.storage import files, keys_file
from codex_pool.storage.files import FileLock
from codex_pool.storage.keys_file import (
    KeysFileMissing,
    load_keys,
    new_key,
    new_salt,
    save_keys,
    update_keys,
)

ROOT = Path(__file__).resolve().parents[2]


def add(name, key=None, **kw):
    """A `change` for update_keys adding a key called `name`."""
    def change(kf):
        entry = ClientKey(name=name, digest=key_digest(kf.salt, key or new_key()), created=1_700_000_000, **kw)
        return KeyFile(kf.salt, [*kf.keys, entry])
    return change


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_new_keys_are_long_random_and_url_safe():
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    for k in keys:
        assert k.startswith("cp-") and len(k) == 46 and looks_like_key(k)
        assert set(k[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    salts = {new_salt() for _ in range(50)}
    assert len(salts) == 50 and all(len(s) == 32 for s in salts)


def test_first_use_creates_a_private_folder_and_file(tmp_path):
    path = tmp_path / "new" / "keys.json"
    old = os.umask(0)
    try:
        written = update_keys(path, add("alice"), create=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(keys_file.lock_path(path).stat().st_mode) == 0o600
    assert load_keys(path) == written and [k.name for k in written.keys] == ["alice"] and len(written.salt) == 32
    text = path.read_text()
    assert text.endswith("\n") and '\n  "keys": [\n' in text  # pretty-printed for people
    assert leftovers(path.parent) == []


def test_the_salt_is_kept_across_edits_and_a_rewrite_resets_a_loosened_mode(tmp_path):
    path = tmp_path / "keys.json"
    first = update_keys(path, add("alice"), create=True)
    path.chmod(0o644)
    second = update_keys(path, add("bob"))
    assert second.salt == first.salt and [k.name for k in second.keys] == ["alice", "bob"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_file_says_how_to_create_one(tmp_path):
    path = tmp_path / "keys.json"
    for call in (lambda: load_keys(path), lambda: update_keys(path, add("alice"))):
        with pytest.raises(KeysFileMissing) as e:
            call()
        assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, KeysError)
        assert str(path) in str(e.value) and "scripts/keys create NAME" in str(e.value)
    assert not path.exists()


def good_bytes():
    salt = bytes(32)
    return json.dumps({"salt": salt.hex(), "keys": [
        {"name": "alice", "hash": key_digest(salt, "cp-" + "a" * 43), "created": 1}]}).encode()


BAD_FILES = [
    ("not JSON", b'{"salt": "00", "keys": [', "not valid JSON at line 1"),
    ("not UTF-8", b'{"salt": "\xff"}', "not UTF-8"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, "keys file"),
    ("wrong document", b"[]", '{"salt"'),
    ("duplicate names", good_bytes().replace(b"]}", b', {"name": "alice", "hash": "' + b"1" * 64 + b'", "created": 1}]}'),
     "'alice': the name is used twice"),
    ("bad limit", good_bytes().replace(b'"created": 1}', b'"created": 1, "limits": {"tokens_per_day": -5}}'),
     "tokens_per_day must be a positive number"),
]


@pytest.mark.parametrize("what,data,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_named_and_never_rewritten(tmp_path, what, data, message):
    path = tmp_path / "keys.json"
    path.write_bytes(data)
    with pytest.raises(KeysError) as e:
        load_keys(path)
    assert str(path) in str(e.value) and message in str(e.value)
    with pytest.raises(KeysError):
        update_keys(path, add("bob"), create=True)  # create: a bad file is not a missing file
    assert path.read_bytes() == data and leftovers(tmp_path) == []


def test_the_size_cap_is_checked_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_bytes(good_bytes())
    assert len(load_keys(path).keys) == 1
    monkeypatch.setattr(keys_file, "MAX_KEYS_BYTES", len(good_bytes()) - 1)
    with pytest.raises(KeysError, match=r"too big to be a keys file"):
        load_keys(path)


def test_a_write_over_the_cap_is_refused_and_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    update_keys(path, add("alice"), create=True)
    before = path.read_bytes()
    monkeypatch.setattr(keys_file, "MAX_KEYS_BYTES", len(before) + 10)
    with pytest.raises(KeysError, match="would exceed"):
        update_keys(path, add("bob"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_not_a_regular_file(tmp_path, what):
    path = tmp_path / "keys.json"
    if what == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer, so opening for reading does not block
    try:
        with pytest.raises(KeysError) as e:
            load_keys(path)
        assert str(path) in str(e.value) and "client_keys" in str(e.value)
    finally:
        if what == "fifo":
            os.close(fd)


def test_unreadable_file_names_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_bytes(good_bytes())

    def denied(*a, **kw):  # as a chmod 000 would (root reads any file, so it is simulated)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(keys_file, "open", denied, raising=False)
    with pytest.raises(KeysError) as e:
        load_keys(path)
    assert str(path) in str(e.value) and "Permission denied" in str(e.value) and "permissions" in str(e.value)


def test_an_invalid_change_is_not_written(tmp_path):
    path = tmp_path / "keys.json"
    update_keys(path, add("alice"), create=True)
    before = path.read_bytes()
    with pytest.raises(KeysError, match="the name is used twice"):
        update_keys(path, add("alice"))  # the result is validated as a reader would
    with pytest.raises(RuntimeError):
        update_keys(path, lambda kf: (_ for _ in ()).throw(RuntimeError("boom")))
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    update_keys(path, add("alice"), create=True)
    before = path.read_bytes()

    def fail(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(KeysError) as e:
        update_keys(path, add("bob"))
    assert str(path) in str(e.value) and "free space" in str(e.value)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_save_replaces_the_whole_file_validated(tmp_path):
    path = tmp_path / "keys.json"
    kf = parse_keys(json.loads(good_bytes()))
    save_keys(path, kf)
    assert load_keys(path) == kf and stat.S_IMODE(path.stat().st_mode) == 0o600
    bad = KeyFile(kf.salt, kf.keys * 2)
    with pytest.raises(KeysError, match="used twice"):
        save_keys(path, bad)
    assert load_keys(path) == kf


def test_an_edit_waits_for_the_lock_and_says_who_holds_it(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    update_keys(path, add("alice"), create=True)
    monkeypatch.setattr(keys_file, "LOCK_TIMEOUT", 0.2)
    with FileLock(path), pytest.raises(KeysError) as e:
        update_keys(path, add("bob"))
    assert "another scripts/keys is editing it" in str(e.value) and str(path) in str(e.value)
    update_keys(path, add("bob"))
    assert [k.name for k in load_keys(path).keys] == ["alice", "bob"]


WRITER = """
import sys
from codex_pool.storage.keys_file import update_keys, new_key
from codex_pool.core.client_keys import ClientKey, KeyFile, key_digest
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    def change(kf, name=f"{who}-{i}"):
        return KeyFile(kf.salt, [*kf.keys, ClientKey(name, key_digest(kf.salt, new_key()), 1.0)])
    update_keys(path, change, create=True)
"""


def test_concurrent_edits_from_several_processes_lose_nothing(tmp_path):
    path = tmp_path / "keys.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{w}", "15"]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    names = sorted(k.name for k in load_keys(path).keys)
    assert names == sorted(f"w{w}-{i}" for w in range(4) for i in range(15))
    assert leftovers(tmp_path) == []
