"""``convgen records show | merge | prune``: reading and repairing tuning logs (the operations
themselves are :mod:`convgen.records`'s)."""

from __future__ import annotations

import argparse

from .common import HelpFormatter, positive_int

RECORDS_EPILOG = """\
examples:
  convgen records show convgen-records.jsonl         # best per workload and target
  convgen records merge all.jsonl a.jsonl b.jsonl    # into all.jsonl (its own records kept), duplicates dropped
  convgen records prune convgen-records.jsonl --keep 5 -o small.jsonl

merge and prune may rewrite a file a tuner is appending to: they hold the appenders' lock
while they read and replace it.
"""

PRUNE_DESCRIPTION = """\
Keep every record of the --keep best candidates per (workload, target, template), and
nothing else. A candidate is one config of one template version, ranked by the median of
all its timings, as `convgen build --records` ranks it; a candidate that ever failed or
gave a wrong result is dropped with all its records, and so (unless --keep-stale) is one
made against another version of its template. Records for a target this convgen does not
know are ranked and kept the same way, without the version check (it needs the target).
"""


def cmd_records(args: argparse.Namespace) -> int:
    """The ``convgen records`` command."""
    from .. import records as rec

    if args.action == "show":
        print(f"{'workload':<46} {'target':<11} {'template':<14} {'trials':>6} {'errors':>6} {'GFLOP/s':>8} {'ms':>8}")
        for row in rec.summarize(args.files):
            if row.best is None:
                print(f"{row.spec_key[:46]:<46} {row.target:<11} {'(no valid kernel)':<14} {row.trials:>6}")
                continue
            spec = row.best.spec
            print(f"{spec.describe()[:46]:<46} {row.target:<11} {row.best.template:<14} {row.trials:>6} "
                  f"{row.errors:>6} {spec.flops / row.cost / 1e9:8.1f} {row.cost * 1e3:8.3f}")
        return 0
    if args.action == "merge":
        print(f"wrote {rec.merge(args.output, args.files)} records to {args.output}")
        return 0
    if args.action == "prune":
        n = rec.prune_file(args.file, keep=args.keep, keep_stale=args.keep_stale, output=args.output)
        print(f"kept {n} records in {args.output or args.file}")
        return 0
    return 2


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``convgen records`` to the ``convgen`` parser."""
    r = sub.add_parser("records", help="show, merge and prune tuning logs", formatter_class=HelpFormatter, epilog=RECORDS_EPILOG)
    rsub = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    x = rsub.add_parser("show", help="best record per workload and target", formatter_class=HelpFormatter)
    x.add_argument("files", nargs="+", help="tuning logs (.jsonl), read together")
    x.set_defaults(fn=cmd_records)
    x = rsub.add_parser("merge", help="merge logs into one, dropping duplicates and corrupt lines", formatter_class=HelpFormatter,
                        description="Merge FILES into OUTPUT. An existing OUTPUT keeps its records (they are merged "
                                    "with the others, never replaced); exact duplicates and corrupt lines are dropped.")
    x.add_argument("output", help="the merged log (created, or merged into if it exists)")
    x.add_argument("files", nargs="+", help="logs to add")
    x.set_defaults(fn=cmd_records)
    x = rsub.add_parser("prune", help="keep the records of the best N candidates per workload/template",
                        formatter_class=HelpFormatter, description=PRUNE_DESCRIPTION)
    x.add_argument("file", help="the tuning log (.jsonl) to prune")
    x.add_argument("--keep", type=positive_int, default=1, help="candidates kept per (workload, target, template)")
    x.add_argument("--keep-stale", action="store_true", help="keep records of older template versions")
    x.add_argument("-o", "--output", help="write here (default: rewrite the file in place, atomically)")
    x.set_defaults(fn=cmd_records)
