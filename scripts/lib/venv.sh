# Shared by scripts/run and scripts/test: create .venv when missing (or when it was made with
# another Python than the one chosen below) and (re)install the project whenever pyproject.toml
# changed since the last install.
#
# Python: $PYTHON if set; else the newest of python3.13, python3.12, python3 that runs and is
# >= 3.12 (mitmproxy 12 needs it); else, where pyenv is installed, the newest >= 3.12 of pyenv's
# own versions (pyenv's shims for versions that are not selected exist on PATH but fail).

CODEX_POOL_MIN_PYTHON="3.12"

# Print "MAJOR.MINOR" of the Python given, or fail if it does not run.
_py_minor() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# Succeed when version $1 ("3.13") >= version $2 ("3.12").
_minor_ge() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

# Print the Python to use, or explain on stderr and fail.
pick_python() {
  local need="$CODEX_POOL_MIN_PYTHON" v
  local how="install Python ${need} or newer (Debian 13: apt-get install python3 python3-venv;"
  how="$how Ubuntu 24.04: apt-get install python3.12 python3.12-venv; Debian 12 has none: use"
  how="$how pyenv or uv), or set PYTHON=/path/to/python3.12"
  if [ -n "${PYTHON:-}" ]; then
    if ! v="$(_py_minor "$PYTHON")" || [ -z "$v" ]; then
      echo "setup: PYTHON=$PYTHON does not run; codex-pool needs Python ${need} or newer (mitmproxy 12)." >&2
      echo "setup: $how" >&2
      return 1
    fi
    if ! _minor_ge "$v" "$need"; then
      echo "setup: PYTHON=$PYTHON is Python $v; codex-pool needs Python ${need} or newer (mitmproxy 12)." >&2
      echo "setup: $how" >&2
      return 1
    fi
    echo "$PYTHON"
    return 0
  fi
  local best="" best_v="" cand
  for cand in python3.13 python3.12 python3; do
    command -v "$cand" >/dev/null 2>&1 || continue
    v="$(_py_minor "$cand")" || continue
    [ -n "$v" ] && _minor_ge "$v" "$need" || continue
    if [ -z "$best" ] || ! _minor_ge "$best_v" "$v"; then
      best="$(command -v "$cand")" best_v="$v"
    fi
  done
  if [ -z "$best" ] && command -v pyenv >/dev/null 2>&1; then
    local root
    root="$(pyenv root 2>/dev/null)" || root=""
    for cand in "$root"/versions/3.*/bin/python3; do
      [ -x "$cand" ] || continue
      v="$(_py_minor "$cand")" || continue
      [ -n "$v" ] && _minor_ge "$v" "$need" || continue
      if [ -z "$best" ] || ! _minor_ge "$best_v" "$v"; then
        best="$cand" best_v="$v"
      fi
    done
  fi
  if [ -z "$best" ]; then
    local seen=""
    for cand in python3.13 python3.12 python3; do
      if v="$(_py_minor "$cand")" && [ -n "$v" ]; then seen="$seen $cand=$v"; fi
    done
    echo "setup: no Python ${need} or newer found (tried python3.13, python3.12, python3:${seen:- none runs}); mitmproxy 12 needs it." >&2
    echo "setup: $how" >&2
    return 1
  fi
  echo "$best"
}

ensure_venv() {
  local extras="$1"  # "" or "[dev]"
  local py want_v have_v
  py="$(pick_python)" || return 1
  want_v="$(_py_minor "$py")"
  if [ -e .venv ] || [ -L .venv ]; then
    have_v="$(_py_minor .venv/bin/python)" || have_v=""
    if [ "$have_v" != "$want_v" ]; then
      if [ -n "$have_v" ]; then have_v="Python $have_v"; else have_v="no working Python"; fi
      echo "setup: .venv has $have_v; recreating it with Python $want_v ($py)" >&2
      rm -rf .venv
    fi
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$py" --version 2>&1) ($py)" >&2
    "$py" -m venv .venv || { echo "setup: '$py -m venv .venv' failed (on Debian/Ubuntu: apt-get install python3.X-venv)" >&2; return 1; }
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
