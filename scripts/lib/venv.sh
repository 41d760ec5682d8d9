# Shared by scripts/run and scripts/test: create .venv when missing and (re)install the project
# whenever pyproject.toml changed since the last install.
ensure_venv() {
  local extras="$1"  # "" or "[dev]"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($py --version 2>&1)" >&2
    "$py" -m venv .venv
  fi
  local stamp=".venv/.codex-pool-installed${extras}"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing codex-pool${extras} and its pinned dependencies into .venv (about a minute on a fresh machine)" >&2
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".${extras}" > .venv/pip-install.log 2>&1; then
      grep -v "is ignored: it is neither a file nor a directory" .venv/pip-install.log >&2
      echo "setup: pip install failed (log above, also in .venv/pip-install.log)" >&2
      return 1
    fi
    .venv/bin/python -m pip check >&2
    echo "$want" > "$stamp"
  fi
}
