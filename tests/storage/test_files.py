import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from codex_pool.storage import files
from codex_pool.storage.files import FileLock, lock_path, remove_stale_temp_files, write_atomic

PYTHON = sys.executable


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --- write_atomic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_write_atomic_sets_exact_mode_whatever_the_umask(tmp_path, mode):
    f = tmp_path / "a.json"
    old_umask = os.umask(0o077)
    try:
        st = write_atomic(f, b"one", mode=mode)
    finally:
        os.umask(old_umask)
    assert f.read_bytes() == b"one" and stat.S_IMODE(f.stat().st_mode) == mode
    assert (st.st_ino, st.st_size) == (f.stat().st_ino, 3)  # the stat of the file now in place
    assert leftovers(tmp_path) == []


def test_write_atomic_new_files_are_0600_and_replacing_does_not_keep_the_old_mode(tmp_path):
    f = tmp_path / "a.json"
    write_atomic(f, b"one")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    f.chmod(0o644)
    write_atomic(f, b"two")  # the mode is the caller's to choose: default 0600
    assert f.read_bytes() == b"two" and stat.S_IMODE(f.stat().st_mode) == 0o600


def test_write_atomic_failure_removes_the_temp_and_keeps_the_original(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    f.write_bytes(b"old")

    def boom(fd):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(f, b"new")
    assert f.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_atomic_does_not_raise_when_only_the_folder_sync_fails(tmp_path, monkeypatch):
    def boom(folder):
        raise OSError(errno.EIO, "simulated")

    monkeypatch.setattr(files, "fsync_dir", boom)
    write_atomic(tmp_path / "a.json", b"new")  # the file is in place: not a failed write
    assert (tmp_path / "a.json").read_bytes() == b"new"


# --- stale temp files --------------------------------------------------------------------------------


def test_remove_stale_temp_files_only_old_and_ours(tmp_path):
    old = time.time() - 120
    ours_old = tmp_path / ".alice.json.tmp-0123456789abcdef"
    ledger_old = tmp_path / ".2026-11-21.0001.json.tmp-0123456789ab"  # the ledger's earlier 12-digit names
    ours_young = tmp_path / ".bob.json.tmp-fedcba9876543210"
    mark_old = tmp_path / "..alice.json.spent.tmp-0123456789abcdef"  # a spent mark's (storage/spent_tokens.py)
    not_ours = [tmp_path / "alice.json", tmp_path / ".alice.json.lock", tmp_path / "notes.tmp-0123456789abcdef",
                tmp_path / ".alice.json.tmp", tmp_path / ".alice.txt.tmp-0123456789abcdef"]
    for p in [ours_old, ledger_old, mark_old, ours_young, *not_ours]:
        p.write_text("x")
    link = tmp_path / ".carol.json.tmp-00000000000000aa"
    link.symlink_to(ours_young)
    for p in [ours_old, ledger_old, mark_old, *not_ours]:
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([ours_old, ledger_old, mark_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours_young.name, link.name] + [p.name for p in not_ours])
    assert remove_stale_temp_files(tmp_path, older_than_seconds=0) == [ours_young]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_remove_stale_temp_files_measures_age_from_the_given_now(tmp_path):
    t = tmp_path / ".a.json.tmp-0123456789abcdef"
    t.write_text("x")
    mtime = t.stat().st_mtime
    assert remove_stale_temp_files(tmp_path, now=mtime + 59) == []
    assert remove_stale_temp_files(tmp_path, now=mtime + 61) == [t]


def test_temp_names_from_write_atomic_are_what_the_sweep_removes(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    names = []
    real_replace = os.replace

    def keep(src, dst):
        names.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", keep)
    write_atomic(f, b"x")
    assert len(names) == 1 and files.TEMP_NAME.match(names[0])


# --- locking -----------------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from codex_pool.storage.files import FileLock
lock = FileLock(Path(sys.argv[1]))
lock.acquire(5)
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


def start_holder(auth: Path) -> subprocess.Popen:
    p = subprocess.Popen([PYTHON, "-c", HOLDER, str(auth)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_lock_path_is_hidden_beside_and_not_json():
    assert lock_path(Path("pool/alice.json")) == Path("pool/.alice.json.lock")
    assert FileLock(Path("pool/alice.json")).path == Path("pool/.alice.json.lock")
    assert FileLock(Path("ledger"), Path("ledger/.lock")).path == Path("ledger/.lock")


def test_lock_excludes_other_processes(tmp_path):
    auth = tmp_path / "alice.json"
    auth.write_text("{}")
    holder = start_holder(auth)
    try:
        lock = FileLock(auth)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="alice.json"):
            lock.acquire(timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 2
        assert not lock.locked
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        lock.acquire(timeout=2)  # released while the holder is still alive
        assert lock.locked
        lock.release()
        lock.release()  # idempotent
    finally:
        holder.kill()
        holder.wait(5)
    lf = lock_path(auth)
    assert lf.name.startswith(".") and not lf.name.endswith(".json")
    assert stat.S_IMODE(lf.stat().st_mode) == 0o600


def test_lock_freed_when_holder_is_killed_and_context_manager(tmp_path):
    auth = tmp_path / "alice.json"
    auth.write_text("{}")
    holder = start_holder(auth)
    try:
        with pytest.raises(TimeoutError):
            FileLock(auth).acquire(timeout=0.1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
    with FileLock(auth) as lock:
        assert lock.locked
        with pytest.raises(TimeoutError):  # a second lock in this same process is excluded too
            FileLock(auth).acquire(timeout=0.05)
    assert not lock.locked
    again = FileLock(auth)
    again.acquire(timeout=0)
    again.release()


def test_lock_without_timeout_waits_until_released(tmp_path):
    folder = tmp_path
    first = FileLock(folder, folder / ".lock")
    first.acquire(timeout=0)
    got = threading.Event()

    def wait_for_it():
        with FileLock(folder, folder / ".lock", timeout=None):
            got.set()

    t = threading.Thread(target=wait_for_it)
    t.start()
    assert not got.wait(0.2)  # still waiting, no TimeoutError
    first.release()
    t.join(5)
    assert got.is_set()
