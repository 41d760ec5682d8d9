"""The pool folder scan against files it must not trust: huge, binary, hostile JSON, symlinks leading
out of the folder, FIFOs, files rewritten while they are read. Each is skipped with a reason naming
the file and the fix; the scan always ends and the good accounts beside it are served."""

import json
import os
import threading

import pytest

from codex_pool.storage import pool_folder
from codex_pool.storage.pool_folder import MAX_FILE_BYTES, PoolFolder
from tests.support.tokens import make_auth, write_auth


def scan_with_one_good_account(folder) -> pool_folder.PoolScan:
    write_auth(folder, "good", make_auth("acct-good"))
    scan = PoolFolder(folder).scan()
    assert list(scan.accounts) == ["good"]
    return scan


def test_a_huge_file_is_refused_by_its_size_unread(tmp_path, monkeypatch):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # 50 MB (sparse)
    reads = []
    real = pool_folder._read_at_most
    monkeypatch.setattr(pool_folder, "_read_at_most", lambda fd, n: reads.append(n) or real(fd, n))
    scan = scan_with_one_good_account(tmp_path)
    reason = scan.problems["huge"].reason
    assert reason.startswith(f"is {50 * 1024 * 1024} bytes, too large for an auth.json (at most {MAX_FILE_BYTES} bytes)")
    assert "remove it from the pool folder" in reason
    assert reads == [MAX_FILE_BYTES + 1]  # only the good file was read, and never more than the cap


@pytest.mark.parametrize("content,reason", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00", "not"),  # binary
    (os.urandom(4096), "not"),
    (b"[" * 300_000 + b"]" * 300_000, "nested too deep"),  # used to raise RecursionError out of the scan
    (json.dumps({"tokens": {"access_token": "\ud800", "id_token": "\ud800"}}).encode(), "undecodable JWT"),  # UnicodeEncodeError
], ids=["png", "random", "deep-json", "lone-surrogate"])
def test_binary_and_hostile_json_are_problems_not_crashes(tmp_path, content, reason):
    (tmp_path / "bad.json").write_bytes(content)
    scan = scan_with_one_good_account(tmp_path)
    assert reason in scan.problems["bad"].reason
    assert "codex login" in scan.problems["bad"].reason  # what to do


def test_a_symlink_leading_outside_the_folder_is_refused_with_the_fix(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    outside = write_auth(codex_home, "auth", make_auth("acct-outside"))
    (pool / "mine.json").symlink_to(outside)
    scan = scan_with_one_good_account(pool)
    reason = scan.problems["mine"].reason
    assert f"is a symlink to {outside}, outside the pool folder" in reason
    assert f"copy the auth.json into {pool} instead of linking it" in reason
    assert "acct-outside" not in json.dumps([a.account_id for a in scan.accounts.values()])


def test_symlinks_that_stay_inside_the_folder_are_followed(tmp_path):
    real_pool = tmp_path / "real-pool"
    real_pool.mkdir()
    (real_pool / "store").mkdir()
    write_auth(real_pool / "store", "alice", make_auth("acct-a"))
    (real_pool / "alice.json").symlink_to(real_pool / "store" / "alice.json")
    linked_folder = tmp_path / "pool"
    linked_folder.symlink_to(real_pool)  # the folder itself may be a link
    scan = PoolFolder(linked_folder).scan()
    assert scan.accounts["alice"].account_id == "acct-a" and scan.problems == {}


def test_a_link_to_a_device_outside_is_refused_before_it_is_opened(tmp_path):
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    scan = scan_with_one_good_account(tmp_path)
    assert "is a symlink to /dev/zero, outside the pool folder" in scan.problems["zero"].reason


def test_a_fifo_does_not_block_the_scan(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    done = []
    thread = threading.Thread(target=lambda: done.append(scan_with_one_good_account(tmp_path)), daemon=True)
    thread.start()
    thread.join(10)
    assert done, "the scan blocked on a FIFO"
    assert "not a regular file" in done[0].problems["pipe"].reason


def rewrite_in_place(path, doc) -> None:
    """What an editor or `cp` does: the same file (inode) truncated and written again."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(json.dumps(doc).encode())


def test_a_file_rewritten_while_read_is_read_again(tmp_path, monkeypatch):
    path = write_auth(tmp_path, "alice", make_auth("acct-old"))
    real = pool_folder._read_at_most
    calls = []

    def read_then_rewrite(fd, limit):
        data = real(fd, limit)
        if not calls:  # the first read: a writer replaces the content right after it
            rewrite_in_place(path, make_auth("acct-new", email="a-much-longer-address@example.com"))
        calls.append(len(data))
        return data

    monkeypatch.setattr(pool_folder, "_read_at_most", read_then_rewrite)
    folder = PoolFolder(tmp_path)
    scan = folder.scan()
    assert len(calls) == 2  # the first version was seen to change under the read and not taken
    assert scan.accounts["alice"].account_id == "acct-new"
    monkeypatch.setattr(pool_folder, "_read_at_most", real)
    assert not folder.scan().changed  # the version read is the one remembered: not read again


def test_a_file_that_keeps_changing_waits_for_the_next_scan(tmp_path, monkeypatch):
    path = write_auth(tmp_path, "alice", make_auth("acct-a"))
    real = pool_folder._read_at_most
    turn = []

    def read_then_rewrite(fd, limit):
        data = real(fd, limit)
        turn.append(1)
        rewrite_in_place(path, make_auth("acct-a", email="x" * len(turn) + "@example.com"))
        return data

    monkeypatch.setattr(pool_folder, "_read_at_most", read_then_rewrite)
    folder = PoolFolder(tmp_path)
    scan = folder.scan()
    assert len(turn) == pool_folder.READ_ATTEMPTS
    assert scan.problems["alice"].reason == "kept changing while it was read; it is read again at the next scan"
    monkeypatch.setattr(pool_folder, "_read_at_most", real)
    again = folder.scan()
    assert again.accounts["alice"].account_id == "acct-a" and again.updated == ["alice"]


def test_a_real_writer_rewriting_in_place_never_breaks_the_scan(tmp_path):
    path = write_auth(tmp_path, "alice", make_auth("acct-a"))
    docs = [make_auth("acct-a", email=f"{'x' * n}@example.com") for n in (1, 300, 3000)]
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            rewrite_in_place(path, docs[i % len(docs)])
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        folder = PoolFolder(tmp_path)
        for _ in range(200):
            scan = folder.scan()  # never raises
            assert set(scan.accounts) | set(scan.problems) == {"alice"}
    finally:
        stop.set()
        thread.join(10)
    rewrite_in_place(path, docs[0])
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a version surely new
    assert folder.scan().accounts["alice"].email == "x@example.com"
