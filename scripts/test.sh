#!/usr/bin/env bash
# The test command of the README and of CI: install (with the torch extra, for convgen.torch),
# set up the emulated ARM board, then run the whole suite except GPU tests (fast tests + board
# tests); on a machine whose best target is not x86-avx2 (AVX-512), the host-dependent tests
# run a second time as if the host were an AVX2 machine (--host-target x86-avx2), so neither
# ISA's lane count, templates or knob spaces go untested.
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
.venv/bin/python -m pytest -m "$markers" "$@"
native=$(.venv/bin/python -c 'import convgen; print(convgen.get_target("host").name)')
if [ "$native" != x86-avx2 ] && .venv/bin/python -c 'import convgen, sys; sys.exit(not convgen.get_target("x86-avx2").runs_here())'; then
  echo "scripts/test.sh: again as if the host were x86-avx2 (this one is $native)"
  # the ARM and CUDA tests pin their own targets, and host_neutral ones (fault handling, a
  # pinned target, CLI plumbing) check nothing an ISA changes: the first pass covered them
  rc=0
  .venv/bin/python -m pytest -m "not slow and not gpu and not board and not host_neutral" --host-target x86-avx2 \
    --ignore=tests/test_arm.py --ignore=tests/test_cuda.py "$@" || rc=$?
  # 5: nothing left to run (arguments that chose only host_neutral tests): not a failure
  [ "$rc" = 5 ] && rc=0
  exit "$rc"
fi
