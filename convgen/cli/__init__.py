"""The ``convgen`` command line: build, run, tune and inspect convolution kernels.

Every subcommand has ``--help`` with examples. Errors are one line on stderr and exit
status 2 (``--debug`` shows the Python traceback too). One module per group of commands
(:mod:`.kernels`, :mod:`.tune`, :mod:`.records`), each registering its own subparsers;
what they share is :mod:`.common`; none imports another's commands.
"""

from __future__ import annotations

import argparse
import sys

from . import kernels, records, tune
from .common import HelpFormatter

EPILOG_MAIN = """\
examples:
  convgen targets                                   # what this machine can run
  convgen layers                                    # built-in workloads
  convgen build --layer resnet50.r2_3x3 -o conv.so  # default (or shipped tuned) config
  convgen build -c 64 -k 128 --size 56 --kernel 3 --padding same --stride 2 -o conv.so
  convgen run conv.so                               # check vs numpy reference, time it
  convgen tune --layer resnet50.r2_3x3 --trials 64 -o conv.so
  convgen tune --preset resnet18 --trials 400       # a campaign over a whole network
  convgen build --target arm-neon --layer resnet50.r4_3x3 -o arm.so
  convgen run arm.so --rpc 127.0.0.1:9090           # on a board through TVM RPC
"""


def make_parser() -> argparse.ArgumentParser:
    """The argparse parser (also used to document the CLI)."""
    p = argparse.ArgumentParser(
        prog="convgen",
        description="Generate, tune and run fast 2D convolution kernels with Apache TVM.",
        epilog=EPILOG_MAIN,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for group in (kernels, tune, records):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convgen`` command."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("convgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `convgen info k.so | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as e:  # noqa: BLE001 - one clear line, not a traceback
        if args.debug:
            raise
        # convgen's own errors are ValueErrors (ConfigError, TargetError, ...) or RuntimeErrors (KernelError)
        known = (ValueError, TypeError, OSError, RuntimeError)
        if not isinstance(e, known):
            print(f"convgen: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
            return 2
        print(f"convgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
