import json
import tomllib

import pytest

from codex_pool.cli import codex_setup
from codex_pool.cli.codex_setup import patch_config

PROXY = "http://127.0.0.1:8989"


def test_custom_mode_on_an_empty_home():
    text = patch_config("", "custom", PROXY)
    doc = tomllib.loads(text)
    assert doc["model_provider"] == "codex-pool" and doc["chatgpt_base_url"] == f"{PROXY}/backend-api/"
    p = doc["model_providers"]["codex-pool"]
    assert p["base_url"] == f"{PROXY}/backend-api/codex" and p["requires_openai_auth"] is True and p["name"] != "OpenAI"


def test_patch_replaces_our_keys_and_keeps_everything_else():
    existing = ('model = "gpt-5"\nmodel_provider = "openai"\nchatgpt_base_url = "https://chatgpt.com/backend-api/"\n\n'
                '[model_providers.codex-pool]\nbase_url = "http://old:1/backend-api/codex"\n\n[profiles.x]\nmodel = "y"\n')
    doc = tomllib.loads(patch_config(existing, "native", "https://127.0.0.1:9443"))
    assert doc["model"] == "gpt-5" and doc["profiles"] == {"x": {"model": "y"}}
    assert "model_provider" not in doc and "codex-pool" not in doc.get("model_providers", {})
    assert doc["openai_base_url"] == "https://127.0.0.1:9443/backend-api/codex"
    again = patch_config(patch_config(existing, "custom", PROXY), "custom", PROXY)
    assert again == patch_config(existing, "custom", PROXY)  # idempotent


@pytest.mark.parametrize("mode", ["custom", "native"])
@pytest.mark.parametrize("existing", ["", 'model = "m"\n', 'model = "m"\n[features]\nfoo = true\napps = true\n\n[profiles.x]\nmodel = "y"\n'])
def test_a_key_turns_codex_apps_off_and_without_one_our_line_goes_again(mode, existing):
    """Codex sends no key to its ChatGPT apps server: keyed, the TUI would warn on every start."""
    keyed = patch_config(existing, mode, PROXY, keyed=True)
    doc = tomllib.loads(keyed)
    assert doc["features"]["apps"] is False
    if "foo" in existing:
        assert doc["features"]["foo"] is True and doc["profiles"] == {"x": {"model": "y"}}
    assert patch_config(keyed, mode, PROXY, keyed=True) == keyed  # idempotent
    unkeyed = tomllib.loads(patch_config(keyed, mode, PROXY))
    assert "apps" not in unkeyed.get("features", {})  # ours removed; the user's own apps line was replaced when keyed


def test_without_a_key_the_users_own_apps_setting_is_kept():
    text = patch_config('[features]\napps = true\n', "custom", PROXY)
    assert tomllib.loads(text)["features"]["apps"] is True


def test_existing_home_needs_yes_and_keeps_a_backup_and_the_users_auth(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('model = "m"\n')
    (home / "auth.json").write_text('{"mine": true}')
    assert codex_setup.main(["--mode", "custom", "--home", str(home), "--proxy", PROXY]) == 0
    assert (home / "config.toml").read_text() == 'model = "m"\n' and "--yes" in capsys.readouterr().out
    assert codex_setup.main(["--mode", "custom", "--home", str(home), "--proxy", PROXY, "--yes"]) == 0
    assert tomllib.loads((home / "config.toml").read_text())["model_provider"] == "codex-pool"
    assert list(home.glob("config.toml.bak-*")) and json.loads((home / "auth.json").read_text()) == {"mine": True}


def test_new_home_gets_a_private_placeholder_login(tmp_path):
    home = tmp_path / "new"
    assert codex_setup.main(["--mode", "custom", "--home", str(home), "--proxy", PROXY]) == 0
    auth = json.loads((home / "auth.json").read_text())
    assert auth["tokens"]["access_token"].count(".") == 2 and oct((home / "auth.json").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("argv,message", [
    (["--mode", "native", "--proxy", "http://127.0.0.1:1"], "needs an https:// proxy origin"),
])
def test_refusals(tmp_path, capsys, argv, message):
    assert codex_setup.main(argv + ["--home", str(tmp_path / "h")]) == 2
    assert message in capsys.readouterr().err


def test_invalid_existing_toml_is_not_touched(tmp_path, capsys):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text("this is = = not toml")
    assert codex_setup.main(["--mode", "custom", "--home", str(home), "--proxy", PROXY, "--yes"]) == 2
    assert (home / "config.toml").read_text() == "this is = = not toml" and "not valid TOML" in capsys.readouterr().err
