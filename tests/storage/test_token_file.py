import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from codex_pool.storage.files import remove_stale_temp_files
from codex_pool.storage.token_file import (
    FileLock,
    TokenFileError,
    TokenSet,
    write_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the venv's python when run as .venv/bin/pytest
NOW = datetime(2026, 11, 21, 9, 45, 36, 123456, tzinfo=timezone.utc)
STAMP = "2026-11-21T09:45:36Z"


def snake_doc() -> dict:
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": "old-id",
            "access_token": "old-access",
            "refresh_token": "old-refresh",
            "account_id": "acct-1",
            "future_token_field": {"nested": [1, {"deep": True}]},
        },
        "last_refresh": "2025-01-01T00:00:00Z",
        "agent_identity": {"kind": "x", "inner": {"keep": "me", "n": 1.5}},
        "personal_access_token": None,
    }


def camel_doc() -> dict:
    return {
        "authMode": "chatgpt",
        "tokens": {
            "idToken": "old-id",
            "accessToken": "old-access",
            "refreshToken": "old-refresh",
            "accountId": "acct-1",
            "extraCamel": "keep",
        },
        "lastRefresh": "2025-01-01T00:00:00Z",
        "tool": {"name": "other-tool"},
    }


def put(path: Path, doc, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(doc, indent=2) + "\n" if not isinstance(doc, str) else doc)
    os.chmod(path, mode)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --- write_tokens: content ---------------------------------------------------------------------------


def test_snake_file_keeps_unknown_keys_and_order(tmp_path):
    f = put(tmp_path / "alice.json", snake_doc())
    write_tokens(f, TokenSet("new-access", "new-id", "new-refresh"), NOW)
    text = f.read_text()
    doc = json.loads(text)
    expected = snake_doc()
    expected["tokens"].update(id_token="new-id", access_token="new-access", refresh_token="new-refresh")
    expected["last_refresh"] = STAMP
    assert doc == expected
    assert list(doc) == list(expected)  # top-level order
    assert list(doc["tokens"]) == list(expected["tokens"])  # order inside tokens
    assert list(doc["agent_identity"]["inner"]) == ["keep", "n"]
    assert text.endswith("}\n") and '\n  "tokens": {\n    "id_token"' in text  # indent 2


def test_camel_file_stays_camel(tmp_path):
    f = put(tmp_path / "bob.json", camel_doc())
    write_tokens(f, TokenSet("new-access", "new-id", "new-refresh"), NOW)
    doc = json.loads(f.read_text())
    assert doc["tokens"] == {
        "idToken": "new-id",
        "accessToken": "new-access",
        "refreshToken": "new-refresh",
        "accountId": "acct-1",
        "extraCamel": "keep",
    }
    assert doc["lastRefresh"] == STAMP and "last_refresh" not in doc
    assert list(doc) == ["authMode", "tokens", "lastRefresh", "tool"] and doc["tool"] == {"name": "other-tool"}


def test_none_fields_keep_old_values(tmp_path):
    f = put(tmp_path / "alice.json", snake_doc())
    write_tokens(f, TokenSet("new-access", None, None), NOW)
    tokens = json.loads(f.read_text())["tokens"]
    assert (tokens["access_token"], tokens["id_token"], tokens["refresh_token"]) == ("new-access", "old-id", "old-refresh")


def test_absent_keys_use_the_dominant_form_and_present_keys_keep_theirs(tmp_path):
    doc = camel_doc()
    del doc["tokens"]["refreshToken"]
    doc["tokens"]["id_token"] = "old-id-snake"  # a mixed file: this key stays snake
    del doc["tokens"]["idToken"]
    del doc["lastRefresh"]
    f = put(tmp_path / "carol.json", doc)
    write_tokens(f, TokenSet("a2", "i2", "r2"), NOW)
    out = json.loads(f.read_text())
    assert out["tokens"]["accessToken"] == "a2" and out["tokens"]["id_token"] == "i2"
    assert out["tokens"]["refreshToken"] == "r2" and "refresh_token" not in out["tokens"]
    assert "idToken" not in out["tokens"]
    assert out["lastRefresh"] == STAMP and "last_refresh" not in out  # added in the file's form


def test_last_refresh_is_utc_with_z(tmp_path):
    f = put(tmp_path / "alice.json", snake_doc())
    local = datetime(2026, 11, 21, 11, 45, 36, tzinfo=timezone(timedelta(hours=2)))
    write_tokens(f, TokenSet("a", None, None), local)
    assert json.loads(f.read_text())["last_refresh"] == STAMP
    with pytest.raises(ValueError):
        write_tokens(f, TokenSet("a", None, None), datetime(2026, 1, 1))  # naive: ambiguous


# --- write_tokens: file system ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_mode_kept_and_no_temp_left(tmp_path, mode):
    f = put(tmp_path / "alice.json", snake_doc(), mode)
    old_umask = os.umask(0o077)  # must not narrow the copied bits
    try:
        write_tokens(f, TokenSet("new-access", None, None), NOW)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(f.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.json"]


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"OPENAI_API_KEY": "sk-x"}', 'no "tokens" object'),
        ('{"tokens": "abc"}', '"tokens" is not an object'),
        (b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_unusable_file_is_refused_and_untouched(tmp_path, content, why):
    f = tmp_path / "alice.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    past = time.time() - 1000
    os.utime(f, (past, past))
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    with pytest.raises(TokenFileError, match=re.escape(why)) as e:
        write_tokens(f, TokenSet("a", "i", "r"), NOW)
    assert str(f) in str(e.value)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.json"]


def test_missing_file_is_an_error_not_a_create(tmp_path):
    f = tmp_path / "ghost.json"
    with pytest.raises(TokenFileError, match="ghost.json"):
        write_tokens(f, TokenSet("a", "i", "r"), NOW)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_temp_and_keeps_original(tmp_path, monkeypatch):
    f = put(tmp_path / "alice.json", snake_doc())
    before = f.read_bytes()

    def boom(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        write_tokens(f, TokenSet("a", "i", "r"), NOW)
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.json"]


def test_symlinked_pool_file_is_updated_through_the_link(tmp_path):
    real = put(tmp_path / "real-auth.json", snake_doc())
    (tmp_path / "pool").mkdir()
    link = tmp_path / "pool" / "alice.json"
    link.symlink_to(real)
    write_tokens(link, TokenSet("via-link", None, None), NOW)
    assert link.is_symlink()
    assert json.loads(real.read_text())["tokens"]["access_token"] == "via-link"


def test_tokens_not_in_repr():
    r = repr(TokenSet("secret-access", "secret-id", "secret-refresh"))
    assert "secret" not in r


# --- locking (storage.files.FileLock, tested in test_files.py) ----------------------------------------


def test_a_held_pool_file_lock_keeps_other_writers_out(tmp_path):
    auth = put(tmp_path / "alice.json", snake_doc())
    with FileLock(auth) as lock:
        assert lock.path == tmp_path / ".alice.json.lock"
        with pytest.raises(TimeoutError, match="alice.json"):
            FileLock(auth).acquire(timeout=0.05)


# --- kill test ---------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_leaves_a_complete_file(tmp_path):
    auth = tmp_path / "alice.json"
    doc = snake_doc()
    doc["padding"] = {f"k{i}": "p" * 200 for i in range(300)}  # ~60 KB: many write syscalls per version
    put(auth, doc)
    rng = random.Random(1234)
    seen: set[int] = set()
    rounds = 40
    t0 = time.monotonic()
    for _ in range(rounds):
        p = subprocess.Popen(
            [PYTHON, str(ROOT / "tests" / "support" / "token_writer_loop.py"), str(auth), "--hold-lock"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0, 0.03))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(5)
        out = json.loads(auth.read_bytes())  # complete after every kill
        m = re.fullmatch(r"access-(\d+)", out["tokens"]["access_token"])
        assert m, out["tokens"]["access_token"]
        n = m.group(1)
        assert out["tokens"]["id_token"] == f"id-{n}" and out["tokens"]["refresh_token"] == f"refresh-{n}"
        assert out["padding"] == doc["padding"] and out["agent_identity"] == doc["agent_identity"]
        assert out["tokens"]["future_token_field"] == doc["tokens"]["future_token_field"]
        assert list(out) == list(doc) and stat.S_IMODE(auth.stat().st_mode) == 0o600
        seen.add(int(n))
        lock = FileLock(auth)
        lock.acquire(timeout=1)  # the killed holder's lock is gone (fd closed by the kernel)
        lock.release()
    assert time.monotonic() - t0 < 20
    assert len(seen) >= 3  # kills landed at different points of the writer's life

    tmps = leftovers(tmp_path)
    assert tmps, "no kill landed inside a write; the test proved nothing"
    past = time.time() - 120
    for name in tmps:
        os.utime(tmp_path / name, (past, past))
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == tmps
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alice.json.lock", "alice.json"]
