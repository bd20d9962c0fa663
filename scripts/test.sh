#!/usr/bin/env bash
# The test command of the README and of CI: install, set up the emulated ARM board when
# this machine can, then run the whole suite except GPU tests (fast tests + board tests).
#   bash scripts/test.sh               # what CI runs
#   bash scripts/test.sh -k runtime    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,tune
markers="not slow and not gpu"
if [ -x scripts/arm_board.sh ]; then
  if bash scripts/arm_board.sh setup; then
    :
  else
    echo "scripts/test.sh: the emulated ARM board could not be set up; board tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -m "$markers" "$@"
