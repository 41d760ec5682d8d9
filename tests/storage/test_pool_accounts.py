"""Accounts into and out of the pool folder: validated, atomic, 0600, never two files of one account."""

import json
import stat

import pytest

from codex_pool.storage.pool_accounts import AccountFileError, import_account, remove_account
from tests.support.tokens import make_auth, write_auth


@pytest.fixture
def dirs(tmp_path):
    pool, home = tmp_path / "pool", tmp_path / "home"
    pool.mkdir()
    home.mkdir()
    return pool, home


def login(home, account_id="acct-1", email="one@example.com"):
    write_auth(home, "auth", make_auth(account_id, email=email))
    return home / "auth.json"


def test_an_import_is_validated_and_written_0600(dirs):
    pool, home = dirs
    done = import_account(pool, "alice", login(home))
    assert done.path == pool / "alice.json" and done.account.email == "one@example.com" and done.replaced is None
    assert stat.S_IMODE(done.path.stat().st_mode) == 0o600
    assert json.loads(done.path.read_text()) == json.loads((home / "auth.json").read_text())


def test_the_same_account_twice_is_refused_naming_its_file_unless_replaced(dirs):
    pool, home = dirs
    import_account(pool, "alice", login(home))
    with pytest.raises(AccountFileError) as e:
        import_account(pool, "alice2", login(home))
    assert "already in the pool as alice.json" in str(e.value) and not (pool / "alice2.json").exists()
    done = import_account(pool, "alice2", login(home), replace=True)
    assert done.replaced is not None and done.replaced.parent == pool / ".removed"
    assert sorted(p.name for p in pool.glob("*.json")) == ["alice2.json"]  # its old file's refresh token is out


def test_a_name_holding_another_account_is_refused(dirs):
    pool, home = dirs
    import_account(pool, "alice", login(home, "acct-1"))
    with pytest.raises(AccountFileError, match="holds another account"):
        import_account(pool, "alice", login(home, "acct-2", "two@example.com"))


@pytest.mark.parametrize("content,words", [("{oops", "not valid JSON"), (None, "does not exist")])
def test_a_bad_login_is_refused_with_what_to_do(dirs, content, words):
    pool, home = dirs
    if content is not None:
        (home / "auth.json").write_text(content)
    with pytest.raises(AccountFileError, match=words):
        import_account(pool, "alice", home / "auth.json")
    assert list(pool.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "x.json", ""])
def test_bad_names_are_refused(dirs, name):
    pool, home = dirs
    with pytest.raises(AccountFileError, match="not an account name"):
        import_account(pool, name, login(home))


def test_remove_moves_the_file_to_removed(dirs):
    pool, home = dirs
    import_account(pool, "alice", login(home))
    moved = remove_account(pool, "alice")
    assert not (pool / "alice.json").exists() and moved.parent == pool / ".removed" and moved.exists()
    with pytest.raises(AccountFileError, match="there is no"):
        remove_account(pool, "alice")


@pytest.mark.parametrize("change", ["remove", "replace"])
def test_a_refresh_under_way_finishes_before_its_file_is_moved_or_replaced(dirs, change):
    """A proxy's refresh holds the file's lock from reading the refresh token to writing the rotated
    one back. Removing (or replacing) the file waits for it: the moved file holds the newest tokens,
    and a replacing login never gets the old login's tokens written into it."""
    import threading
    from datetime import datetime, timezone

    from codex_pool.storage.files import FileLock
    from codex_pool.storage.token_file import TokenSet, write_tokens
    from tests.support.tokens import make_jwt

    pool, home = dirs
    import_account(pool, "alice", login(home))
    path = pool / "alice.json"
    rotated = TokenSet(make_jwt({"sub": "rotated"}), None, "rt-rotated")
    lock = FileLock(path)
    lock.acquire(5)  # the refresh has read the refresh token and is asking the token endpoint
    done: dict = {}

    def change_it():
        if change == "remove":
            done["moved"] = remove_account(pool, "alice")
        else:
            done["imported"] = import_account(pool, "alice", login(home / "again", "acct-2", "two@example.com"),
                                              replace=True)

    (home / "again").mkdir()
    worker = threading.Thread(target=change_it)
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()  # waiting for the refresh to finish
    write_tokens(path, rotated, datetime.now(timezone.utc))  # the refresh writes the rotated tokens back
    lock.release()
    worker.join(10)
    if change == "remove":
        assert json.loads(done["moved"].read_text())["tokens"]["refresh_token"] == "rt-rotated"
    else:
        saved = json.loads(path.read_text())
        assert saved["tokens"]["account_id"] == "acct-2" and saved["tokens"]["refresh_token"] != "rt-rotated"
