from codex_pool.storage.state_file import StateFile


def test_state_file_round_trip_and_corrupt_file_moved_aside(tmp_path):
    f = StateFile(tmp_path / "state.json")
    assert f.load() == (None, None)
    assert f.save({"version": 1, "saved_at": 1, "x": 1}) is True
    assert f.save({"version": 1, "saved_at": 2, "x": 1}) is False  # unchanged apart from the time
    assert f.load()[0]["x"] == 1
    assert oct((tmp_path / "state.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "state.json").write_text("{torn")
    doc, warning = StateFile(tmp_path / "state.json").load()
    assert doc is None and str(tmp_path / "state.json") in warning and "moved it to" in warning
    assert list(tmp_path.glob("state.json.corrupt-*"))
