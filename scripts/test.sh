#!/usr/bin/env bash
# The test command of the README and of CI: install (with the torch extra, for convgen.torch),
# set up the emulated ARM board, then run the whole suite except GPU tests (fast tests + board tests).
#   bash scripts/test.sh               # what CI runs; fails if the board cannot be set up
#   bash scripts/test.sh --no-board    # without the board (no root here, say): skips its tests
#   bash scripts/test.sh -k runtime    # other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
board=1
if [ "${1:-}" = "--no-board" ]; then
  board=0
  shift
fi
bash scripts/install.sh test,tune,torch
if [ "$board" = 1 ] && ! bash scripts/arm_board.sh setup; then
  echo "scripts/test.sh: the emulated ARM board could not be set up (see above);" \
       "run 'bash scripts/test.sh --no-board' to test without it" >&2
  exit 1
fi
markers="not slow and not gpu"
[ "$board" = 1 ] || markers="$markers and not board"
exec .venv/bin/python -m pytest -m "$markers" "$@"
