"""One proxy per data_dir: the second claim is refused, naming the holder; a release frees it."""

import os

import pytest

from codex_pool.storage.data_dir_lock import LOCK_NAME, DataDirInUse, claim_data_dir


def test_a_data_dir_has_one_holder_at_a_time(tmp_path):
    data = tmp_path / "data"
    first = claim_data_dir(data)
    assert oct(data.stat().st_mode & 0o777) == "0o700" and (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirInUse, match=rf"data_dir {data} is in use by another codex-pool proxy \(pid {os.getpid()}\)"):
        claim_data_dir(data)
    first.release()
    claim_data_dir(data).release()
