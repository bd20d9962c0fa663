#!/usr/bin/env bash
# Install convgen into ./.venv (created if missing) with the given extras, e.g.
#   bash scripts/install.sh                          # test,tune, with python3
#   bash scripts/install.sh test,tune,bench
#   bash scripts/install.sh test,tune python3.12     # another interpreter for the venv
# Idempotent and cached: a stamp keyed by pyproject.toml and the extras skips pip when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,tune}"
py="${2:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "convgen needs Python >= 3.11 ($py is $("$py" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/pip ]; then  # missing, or left half-made by a failed attempt
  rm -rf .venv
  if ! "$py" -m venv .venv; then
    rm -rf .venv
    echo "could not create .venv with $py: on Debian/Ubuntu install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
stamp=".venv/.installed-$(echo "$extras" | tr ',' '-')-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
