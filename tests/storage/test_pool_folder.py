import os
import time

from codex_pool.storage.pool_folder import PoolFolder
from tests.support.tokens import make_auth, write_auth


def test_scan_loads_accounts_and_skips_bad_files_untouched(tmp_path):
    write_auth(tmp_path, "alice", make_auth("acct-a"))
    bad = write_auth(tmp_path, "broken", "{nope")
    before = (bad.read_bytes(), bad.stat().st_mode, bad.stat().st_mtime_ns)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".alice.json.tmp").write_text("{}")
    scan = PoolFolder(tmp_path).scan()
    assert list(scan.accounts) == ["alice"]
    assert list(scan.problems) == ["broken"]
    assert [p.name for p in scan.new_problems] == ["broken"]
    assert "not valid JSON" in scan.problems["broken"].reason
    assert (bad.read_bytes(), bad.stat().st_mode, bad.stat().st_mtime_ns) == before


def test_bad_file_is_reported_once_until_it_changes(tmp_path):
    folder = PoolFolder(tmp_path)
    bad = write_auth(tmp_path, "broken", "{nope")
    assert len(folder.scan().new_problems) == 1
    assert folder.scan().new_problems == []
    bad.write_text('{"tokens": 1}')
    os.utime(bad, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = folder.scan()
    assert [p.reason.split(";")[0] for p in again.new_problems] == ['"tokens" is not an object']


def test_added_changed_removed_files_are_seen(tmp_path):
    folder = PoolFolder(tmp_path)
    assert folder.scan().accounts == {}
    write_auth(tmp_path, "alice", make_auth("acct-a"))
    scan = folder.scan()
    assert scan.added == ["alice"] and scan.changed
    unchanged = folder.scan()
    assert not unchanged.changed and list(unchanged.accounts) == ["alice"]
    p = write_auth(tmp_path, "alice", make_auth("acct-a2"))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    scan = folder.scan()
    assert scan.updated == ["alice"] and scan.accounts["alice"].account_id == "acct-a2"
    p.unlink()
    scan = folder.scan()
    assert scan.removed == ["alice"] and scan.accounts == {}


def test_unreadable_entry_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "dir.json").mkdir()
    os.symlink(tmp_path / "missing-target", tmp_path / "dangling.json")
    write_auth(tmp_path, "ok", make_auth("acct-ok"))
    scan = PoolFolder(tmp_path).scan()
    assert list(scan.accounts) == ["ok"]
    assert "not a regular file" in scan.problems["dir"].reason
    assert "cannot be read" in scan.problems["dangling"].reason


def test_missing_folder_is_reported(tmp_path):
    scan = PoolFolder(tmp_path / "nope").scan()
    assert scan.accounts == {} and "does not exist" in scan.folder_error


def test_duplicate_account_serves_freshest_and_lists_both(tmp_path):
    now = int(time.time())
    write_auth(tmp_path, "a-old", make_auth("acct-same", exp=now + 100))
    write_auth(tmp_path, "b-new", make_auth("acct-same", exp=now + 9000))
    write_auth(tmp_path, "other", make_auth("acct-other"))
    folder = PoolFolder(tmp_path)
    scan = folder.scan()
    assert sorted(scan.accounts) == ["b-new", "other"]
    assert scan.duplicates == {"a-old": "b-new"}
    assert scan.new_duplicates == [("a-old", "b-new")]
    assert folder.scan().new_duplicates == []  # warned once


def test_duplicate_tie_goes_to_first_name(tmp_path):
    exp = int(time.time()) + 1000
    write_auth(tmp_path, "zed", make_auth("acct-same", exp=exp))
    write_auth(tmp_path, "amy", make_auth("acct-same", exp=exp))
    scan = PoolFolder(tmp_path).scan()
    assert list(scan.accounts) == ["amy"] and scan.duplicates == {"zed": "amy"}


def test_scan_clears_only_stale_temp_files_of_killed_token_writers(tmp_path):
    write_auth(tmp_path, "alice", make_auth("acct-a"))
    old = time.time() - 120
    stale = tmp_path / ".alice.json.tmp-0123456789abcdef"
    young = tmp_path / ".alice.json.tmp-fedcba9876543210"  # may be a write in progress
    kept = [tmp_path / ".alice.json.tmp", tmp_path / ".alice.json.lock", tmp_path / "notes.tmp-0123456789abcdef"]
    for p in [stale, young, *kept]:
        p.write_text("{}")
    for p in [stale, *kept]:
        os.utime(p, (old, old))
    folder = PoolFolder(tmp_path)
    scan = folder.scan()
    assert list(scan.accounts) == ["alice"] and not scan.problems
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["alice.json", young.name, *(p.name for p in kept)])
    os.utime(young, (old, old))
    assert not folder.scan().changed  # hidden files are not accounts: nothing to report
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["alice.json", *(p.name for p in kept)])
