from pathlib import Path

import pytest

from codex_pool.core.config import ConfigError, parse_config
from codex_pool.storage.config_file import load_config


def test_load_config_reports_yaml_errors_with_position(tmp_path):
    f = tmp_path / "mitm.yaml"
    f.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and "not valid YAML at line" in str(e.value)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_mitm_yaml_is_valid_and_documents_every_key():
    from codex_pool.core import config as mod

    root = Path(__file__).resolve().parents[2]
    c = load_config(root / "mitm.yaml")
    assert c == parse_config({}, root, source=(root / "mitm.yaml").resolve())  # shipped values are the defaults
    text = (root / "mitm.yaml").read_text()
    for key in mod._VALIDATORS:
        assert f"\n{key}:" in text, key
