#!/usr/bin/env bash
# The emulated aarch64 board: a TVM RPC server under qemu-user on this x86 machine, so ARM
# kernels cross-compiled here run (and are checked) through RPC as on a real board.
#
#   bash scripts/arm_board.sh setup                    # install + cache (idempotent; ~1 s when cached)
#   bash scripts/arm_board.sh start [--port 9090] [--cpu cortex-a72|neoverse-n1]
#                                   [--tracker HOST:PORT --key KEY] [--timeout 180]
#   bash scripts/arm_board.sh stop [--port P]          # one board, or every board it started
#   bash scripts/arm_board.sh status                   # exit status 0 when set up
#
# setup (root, Debian; 45-60 s and ~0.7 GB from scratch):
#   - Debian packages: qemu-user (qemu-aarch64), the cross gcc and the arm64 glibc to link
#     against (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross);
#   - a sysroot: arm64 python3.11 and the libraries it and TVM's runtime need, fetched with
#     `apt-get download PKG:arm64` (hence `dpkg --add-architecture arm64`) and unpacked with
#     `dpkg -x` (nothing arm64 is installed on the host);
#   - site-packages: the aarch64 wheels of the TVM, tvm-ffi and numpy versions
#     pyproject.toml pins, placed by the host's pip (--platform manylinux..._aarch64).
# Everything lives under .cache/arm-board/ next to this repository; stamps keyed by the
# package lists skip what is there.
#
# start: runs `qemu-aarch64 -cpu CPU sysroot/usr/bin/python3.11 scripts/arm_rpc_server.py`
# in its own process group (setsid), listening on 127.0.0.1 only, and waits until it
# serves. -cpu matters: qemu's cortex-a72 refuses dotprod/SVE instructions (SIGILL), so a
# kernel built with the wrong mattr fails here as it would on the board. TVM is imported
# runtime-only (TVM_USE_RUNTIME_LIB=1: ~7 s under qemu instead of 16 s). stop kills the
# process group.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="$repo/.cache/arm-board"
sysroot="$cache/sysroot"
sitepkgs="$cache/site-packages"
rundir="$cache/run"

# arm64 Debian 12 (bookworm) packages of the sysroot (the names carry versions: another
# release needs this list adjusted): python3.11 and the shared libraries it loads, plus
# libstdc++/libgcc for TVM's runtime. (sqlite, readline, ncurses, ... are left out: unused.)
SYSROOT_PKGS="python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6
libgcc-s1 libstdc++6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libcrypt1 libuuid1"
HOST_PKGS="qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
# manylinux tags an aarch64 glibc 2.36 system accepts: pip does not infer older ones from
# --platform, so every tag a wheel may carry is listed.
PLATFORMS="manylinux_2_36_aarch64 manylinux_2_34_aarch64 manylinux_2_31_aarch64 manylinux_2_28_aarch64
manylinux_2_27_aarch64 manylinux_2_26_aarch64 manylinux_2_24_aarch64 manylinux_2_17_aarch64
manylinux2014_aarch64"
CPUS="cortex-a72 neoverse-n1 cortex-a76 cortex-a53 cortex-a57 a64fx max"

die() { echo "arm_board: $*" >&2; exit 1; }
say() { echo "arm_board: $*"; }

host_python() {
  if [ -x "$repo/.venv/bin/python" ]; then echo "$repo/.venv/bin/python"; else command -v python3; fi
}

# The runtime packages pyproject.toml pins (apache-tvm, apache-tvm-ffi, numpy), so the board
# runs the TVM the host compiles with.
pinned_wheels() {
  "$(host_python)" - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(" ".join(d.replace(" ", "") for d in deps))
EOF
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then
    # -n: fail at once instead of waiting for a password (CI has no terminal)
    sudo -n "$@" || die "need root to run: $* (sudo asked for a password: run it yourself, then run this again)"
  else die "need root (or sudo) to run: $*"; fi
}

host_tools_ok() {
  command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null &&
    [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] &&
    dpkg --print-foreign-architectures 2>/dev/null | grep -qx arm64
}

setup_host() {
  host_tools_ok && return 0
  command -v apt-get >/dev/null || die "needs a Debian/Ubuntu host (apt-get) for $HOST_PKGS"
  say "installing $HOST_PKGS (apt)"
  as_root dpkg --add-architecture arm64
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $HOST_PKGS >/dev/null
}

setup_sysroot() {
  local stamp="$sysroot/.stamp-$(echo "$SYSROOT_PKGS" | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  say "fetching the arm64 python3.11 sysroot (apt-get download)"
  local tmp="$cache/sysroot.tmp"
  rm -rf "$tmp" "$cache/debs" && mkdir -p "$tmp" "$cache/debs"
  local pkgs=()
  for p in $SYSROOT_PKGS; do pkgs+=("$p:arm64"); done
  # after `dpkg --add-architecture arm64` the package lists need the arm64 entries
  if ! (cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null 2>&1); then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    (cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null) ||
      die "apt-get download of the arm64 packages failed"
  fi
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$tmp"; done
  rm -rf "$cache/debs" "$sysroot"
  touch "$tmp/$(basename "$stamp")"
  mv "$tmp" "$sysroot"
}

setup_sitepkgs() {
  local wheels
  wheels="$(pinned_wheels)"
  local stamp="$sitepkgs/.stamp-$(echo "$wheels $PLATFORMS" | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  say "fetching aarch64 wheels: $wheels"
  local tmp="$cache/site-packages.tmp" plats=()
  for p in $PLATFORMS; do plats+=(--platform "$p"); done
  rm -rf "$tmp"
  "$(host_python)" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$tmp" --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: \
    "${plats[@]}" $wheels 2>"$cache/pip.log" || { cat "$cache/pip.log" >&2; die "pip could not fetch the aarch64 wheels"; }
  rm -rf "$sitepkgs"
  touch "$tmp/$(basename "$stamp")"
  mv "$tmp" "$sitepkgs"
}

is_set_up() {  # exit status 0 when setup has run to the end, 1 otherwise
  if host_tools_ok && ls "$sysroot"/.stamp-* >/dev/null 2>&1 && ls "$sitepkgs"/.stamp-* >/dev/null 2>&1; then
    return 0
  fi
  return 1
}

cmd_setup() {
  local t0=$SECONDS
  mkdir -p "$cache"
  setup_host
  setup_sysroot
  setup_sitepkgs
  say "set up in $((SECONDS - t0)) s ($(du -sh "$cache" | cut -f1) in $cache)"
}

pidfile() { echo "$rundir/board-$1.pid"; }

alive() {  # alive PGID: is any process of the group still there? (or, before its setsid, the leader)
  kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null
}

cmd_start() {
  local port=9090 cpu=cortex-a72 tracker="" key="" timeout=180
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --cpu) cpu="$2"; shift 2 ;;
      --tracker) tracker="$2"; shift 2 ;;
      --key) key="$2"; shift 2 ;;
      --timeout) timeout="$2"; shift 2 ;;
      *) die "start: unknown option $1 (see the header of $0)" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "start: --port must be a number, got '$port'"
  [[ " $CPUS " == *" $cpu "* ]] || die "start: --cpu must be one of: $CPUS"
  [ -z "$tracker" ] || [ -n "$key" ] || die "start: --tracker needs --key"
  is_set_up || die "the board is not set up: run 'bash scripts/arm_board.sh setup' first"
  mkdir -p "$rundir"
  local pf log
  pf="$(pidfile "$port")"
  log="$rundir/board-$port.log"
  if [ -f "$pf" ] && alive "$(cut -d' ' -f1 "$pf")"; then
    say "a board already serves on 127.0.0.1:$port ($(cut -d' ' -f2 "$pf"))"
    return 0
  fi
  local args=(--host 127.0.0.1 --port "$port" --cpu "$cpu")
  [ -z "$tracker" ] || args+=(--tracker "$tracker" --key "$key")
  # setsid: the board is its own process group (stop kills exactly it). No core files from
  # a SIGILL'd kernel. A clean environment: nothing of the host's Python leaks in.
  (
    ulimit -c 0
    exec setsid env -i PATH=/usr/bin:/bin HOME="$rundir" LANG=C.UTF-8 \
      QEMU_LD_PREFIX="$sysroot" PYTHONPATH="$sitepkgs" TVM_USE_RUNTIME_LIB=1 \
      qemu-aarch64 -cpu "$cpu" "$sysroot/usr/bin/python3.11" "$here/arm_rpc_server.py" "${args[@]}" \
      </dev/null >"$log" 2>&1
  ) &
  local pgid=$!
  echo "$pgid $cpu" >"$pf"
  local t0=$SECONDS
  until grep -q "arm board serving" "$log" 2>/dev/null; do
    if ! alive "$pgid"; then
      rm -f "$pf"
      tail -n 20 "$log" >&2
      die "the board did not start (log: $log)"
    fi
    if [ $((SECONDS - t0)) -ge "$timeout" ]; then
      kill -KILL -- "-$pgid" 2>/dev/null || true
      rm -f "$pf"
      die "the board did not start serving within $timeout s (log: $log)"
    fi
    sleep 0.3
  done
  say "board ($cpu) serving on 127.0.0.1:$port${tracker:+, registered at $tracker as $key} after $((SECONDS - t0)) s (pgid $pgid, log $log)"
}

stop_one() {  # stop_one PIDFILE
  local pf="$1" pgid
  pgid="$(cut -d' ' -f1 "$pf")"
  if alive "$pgid"; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pgid" || break; sleep 0.1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$pf"
  say "stopped the board on port $(basename "$pf" .pid | cut -d- -f2)"
}

cmd_stop() {
  local port=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      *) die "stop: unknown option $1" ;;
    esac
  done
  if [ -n "$port" ]; then
    [ -f "$(pidfile "$port")" ] && stop_one "$(pidfile "$port")" || say "no board on port $port"
    return 0
  fi
  local found=0
  for pf in "$rundir"/board-*.pid; do
    [ -f "$pf" ] || continue
    stop_one "$pf"
    found=1
  done
  [ "$found" = 1 ] || say "no board running"
}

cmd_status() {
  if is_set_up; then say "set up ($(du -sh "$cache" 2>/dev/null | cut -f1) in $cache)"; else say "not set up"; fi
  for pf in "$rundir"/board-*.pid; do
    [ -f "$pf" ] || continue
    local port pgid cpu
    port="$(basename "$pf" .pid | cut -d- -f2)"
    read -r pgid cpu <"$pf"
    if alive "$pgid"; then say "board ($cpu) serving on 127.0.0.1:$port (pgid $pgid)"
    else say "board on port $port is dead (log: $rundir/board-$port.log)"; rm -f "$pf"; fi
  done
  is_set_up
}

case "${1:-}" in
  setup) shift; cmd_setup "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
