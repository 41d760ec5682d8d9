"""Tokens a killed refresh left in a complete temp file are adopted, not swept away (#11.14)."""

import json
import os

from codex_pool.storage.files import FileLock, sweep_temp_files
from codex_pool.storage.pool_temp import recover_temp_files
from tests.support.tokens import make_auth, write_auth


def temp_beside(folder, name, doc):
    path = folder / f".{name}.json.tmp-0123456789abcdef"
    path.write_text(json.dumps(doc) if isinstance(doc, dict) else doc)
    os.chmod(path, 0o600)
    return path


def test_a_complete_newer_temp_file_is_adopted_and_anything_else_removed(tmp_path):
    old = make_auth("acct-alice", iat=1000, exp=2000, refresh_token="rt-old")
    write_auth(tmp_path, "alice", old)
    newer = make_auth("acct-alice", iat=1500, exp=2500, refresh_token="rt-new")
    temp_beside(tmp_path, "alice", newer)
    write_auth(tmp_path, "bob", make_auth("acct-bob", iat=1000, exp=2000))
    temp_beside(tmp_path, "bob", '{"tokens": {"access_tok')  # cut short by the kill
    write_auth(tmp_path, "carol", make_auth("acct-carol", iat=1500, exp=2500))
    temp_beside(tmp_path, "carol", make_auth("acct-carol", iat=1000, exp=2000))  # older than the file
    assert sorted(recover_temp_files(tmp_path)) == [
        (".alice.json.tmp-0123456789abcdef", "adopted"), (".bob.json.tmp-0123456789abcdef", "removed"),
        (".carol.json.tmp-0123456789abcdef", "removed")]
    assert json.loads((tmp_path / "alice.json").read_text())["tokens"]["refresh_token"] == "rt-new"
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_a_temp_file_of_an_account_being_written_is_left_alone(tmp_path):
    write_auth(tmp_path, "alice", make_auth("acct-alice", iat=1000, exp=2000))
    temp = temp_beside(tmp_path, "alice", make_auth("acct-alice", iat=1500, exp=2500))
    with FileLock(tmp_path / "alice.json"):  # a refresh in progress holds the account's lock
        assert recover_temp_files(tmp_path) == []
    assert temp.exists()


def test_the_data_dir_sweep_takes_every_temp_file_whatever_its_age(tmp_path):
    (tmp_path / "ledger" / "2026-12").mkdir(parents=True)
    left = [tmp_path / ".state.json.tmp-0123456789abcdef", tmp_path / "ledger" / "2026-12" / ".2026-12-01.0001.json.tmp-0123456789ab"]
    for p in left:
        p.write_text("{")
    (tmp_path / "state.json").write_text("{}")
    assert sorted(sweep_temp_files(tmp_path)) == sorted(left)
    assert (tmp_path / "state.json").exists()
