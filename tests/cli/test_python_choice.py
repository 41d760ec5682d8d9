"""scripts/lib/venv.sh picks the Python for scripts/run and scripts/test: $PYTHON, else the newest
python3.13 / python3.12 / python3 that is >= 3.12, and says what to install when there is none.
Run with stand-in interpreters on a PATH of our own (no pyenv on it)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_python(folder: Path, name: str, version: str | None) -> Path:
    """An executable that answers the version probe like Python `version` (None: does not run)."""
    path = folder / name
    body = f'echo "{version}"' if version else "exit 127"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def pick(tmp_path: Path, pythons: dict[str, str | None], env_python: str | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sort", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, version in pythons.items():
        fake_python(bin_dir, name, version)
    env = {"PATH": str(bin_dir)}
    if env_python:
        env["PYTHON"] = env_python
    return subprocess.run(["/bin/bash", "-c", f". {ROOT / 'scripts/lib/venv.sh'}; pick_python"],
                          capture_output=True, text=True, env=env, timeout=30)


@pytest.mark.parametrize("pythons,chosen", [
    ({"python3.13": "3.13", "python3.12": "3.12", "python3": "3.11"}, "python3.13"),
    ({"python3.12": "3.12", "python3": "3.11"}, "python3.12"),
    ({"python3.13": None, "python3.12": "3.12"}, "python3.12"),  # a broken shim is passed over
    ({"python3": "3.14"}, "python3"),
])
def test_the_newest_python_of_3_12_or_later_is_chosen(tmp_path, pythons, chosen):
    done = pick(tmp_path, pythons)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == chosen


def test_no_suitable_python_says_what_to_install(tmp_path):
    done = pick(tmp_path, {"python3": "3.11"})
    assert done.returncode == 1 and done.stdout == ""
    assert "no Python 3.12 or newer found" in done.stderr and "python3=3.11" in done.stderr
    assert "set PYTHON=" in done.stderr and "apt-get install" in done.stderr


def test_python_env_wins_but_must_be_new_enough(tmp_path):
    old = fake_python(tmp_path, "old-python", "3.11")
    done = pick(tmp_path, {"python3.13": "3.13"}, env_python=str(old))
    assert done.returncode == 1 and "is Python 3.11" in done.stderr and "3.12 or newer" in done.stderr
    new = fake_python(tmp_path, "new-python", "3.12")
    done = subprocess.run(["/bin/bash", "-c", f". {ROOT / 'scripts/lib/venv.sh'}; pick_python"],
                          capture_output=True, text=True, env={"PATH": str(tmp_path / "bin"), "PYTHON": str(new)},
                          timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == str(new)
