#!/usr/bin/env bash
# Create a Python >= 3.13 venv with mongoeco (a second MongoDB wire server for the tests, the one
# with multi-document transactions) in $1. mongoeco needs Python 3.13; pyenv provides it here.
set -euo pipefail
DEST="${1:-.tools/mongoeco-venv}"
find_python() {
  local c
  for c in "${PYTHON313:-}" python3.13 python3.14 \
           $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[3-9]*/bin/python3 2>/dev/null) \
           /usr/bin/python3.13 /usr/local/bin/python3.13; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}
PY="$(find_python)" || { echo "Python >= 3.13 is required for mongoeco (set PYTHON313)" >&2; exit 1; }
"$PY" -m venv "$DEST"
"$DEST/bin/pip" install -q --disable-pip-version-check 'mongoeco[wire]>=4.11,<5'
"$DEST/bin/python" -c 'import mongoeco.wire.proxy' && echo "mongoeco ready in $DEST ($("$PY" --version))"
