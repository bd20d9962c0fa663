"""The emulated ARM board's TVM RPC server: run under qemu-aarch64 by scripts/arm_board.sh.

Why not ``python -m tvm.exec.rpc_server``: it starts the server in a ``PopenWorker``, which
re-executes ``sys.executable``, an aarch64 binary this x86 kernel cannot exec without
binfmt_misc. Here TVM's listen loop runs in this process and each session is a forked child
(qemu-user emulates fork), as in TVM's own server.

A session whose process dies, a SIGILL from an instruction the board's CPU lacks or a
SIGSEGV, ends that session only: the client gets an RPC error naming the signal and the
board's CPU, and the server goes on to the next session. (TVM's ``_serving`` raises there,
which would end the whole server.)

Needs only the TVM runtime (``TVM_USE_RUNTIME_LIB=1``): nothing here imports te or s_tir.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time

from tvm.rpc import _ffi_api
from tvm.rpc import server as tvm_server
from tvm.support import utils

log = logging.getLogger("arm-board")


def describe_exit(code: int, cpu: str) -> str:
    """What a session process's exit code means, for the client's error message."""
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig == signal.SIGILL:
            return (f"was killed by SIGILL (illegal instruction) on the board's CPU ({cpu}): the kernel "
                    f"uses an instruction this CPU lacks (built for a target with more ISA extensions, "
                    f"e.g. +dotprod on a cortex-a72?)")
        return f"was killed by {name} on the board's CPU ({cpu})"
    return f"exited with status {code}"


def make_serving(cpu: str):
    """TVM's per-session handler, made to survive a session process that dies."""

    def serving(sock: socket.socket, addr, opts: dict, load_library) -> None:
        log.info("session from %s", addr)
        work = utils.tempdir()
        old_cwd = os.getcwd()
        os.chdir(work.path)  # uploads of different sessions never collide
        try:
            proc = multiprocessing.Process(target=tvm_server._serve_loop, args=(sock, load_library, work))
            proc.start()
            proc.join(opts.get("timeout"))
            if proc.is_alive():
                message = f"RPCSessionTimeoutError: the {opts['timeout']:.0f} s session expired on the board"
                proc.kill()
                proc.join()
            elif proc.exitcode:
                message = f"RPCError: the board's session process {describe_exit(proc.exitcode, cpu)}"
            else:
                message = ""
            if message:
                log.warning("session from %s: %s", addr, message)
                try:  # the client waits for a reply: this error is it
                    _ffi_api.ReturnException(sock.fileno(), message)
                except Exception:  # noqa: BLE001 - the client may be gone already
                    pass
        finally:
            os.chdir(old_cwd)
            work.remove()
            sock.close()
        log.info("session from %s ended", addr)

    return serving


def make_parser() -> argparse.ArgumentParser:
    """The command line; the server listens on loopback unless ``--host`` says otherwise (it
    runs any library sent to it: only a private address or a tunnel should reach it)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--cpu", default="max", help="the qemu CPU model (for error messages)")
    p.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker to register with")
    p.add_argument("--key", default="", help="device key at the tracker")
    return p


def main() -> int:
    """Listen on ``--host:--port`` (directly, or registered at ``--tracker`` as ``--key``)."""
    p = make_parser()
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    tvm_server.logger.setLevel(logging.WARNING)

    tracker = None
    if args.tracker:
        host, _, port = args.tracker.rpartition(":")
        tracker = (host, int(port))
        if not args.key:
            p.error("--tracker needs --key")
    multiprocessing.set_start_method("fork")
    tvm_server._serving = make_serving(args.cpu)  # the listen loop looks it up at call time

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4)
    # scripts/arm_board.sh waits for this line
    print(f"arm board serving on {args.host}:{args.port} (cpu {args.cpu}, key {args.key or '-'}, "
          f"tracker {args.tracker or '-'})", flush=True)
    while True:
        try:
            tvm_server._listen_loop(sock, args.port, args.key, tracker, None, None)
        except Exception as e:  # noqa: BLE001 - a lost tracker, a bad handshake: keep serving
            log.warning("listen loop: %s; restarting it", e)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
