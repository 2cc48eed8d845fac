"""`adapter-atlas scan ROOT... --out DIR [--scheduler ADDRESS] [--workers N] [--json]`: sketch a population.

Walks the roots, sketches every new or changed adapter in parallel Dask tasks (a local cluster of N
one-thread worker processes by default, any running scheduler by address, or `--scheduler synchronous`)
and stores the sketches in DIR (Parquet, keyed by content sha256). Unreadable files are listed with their
reason and never stop the scan. Progress on stderr; the summary (or --json) on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tqdm import tqdm

from analysis.commands import options as opt
from analysis.commands.overlap import _clean
from analysis.population.lock import writer_lock
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import DEFAULT_K, DEFAULT_SEED, DEFAULT_TOP, SketchConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scan", help="sketch every adapter under some folders into a population index (Dask)",
        description="Fixed-size random-projection sketches of every adapter under the roots, computed in "
                    "parallel on Dask and stored in a Parquet index keyed by content hash; a rerun only "
                    "sketches new or changed files.")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="folders (searched recursively) or adapter files")
    p.add_argument("--out", required=True, metavar="DIR", help="index directory (created, or updated in place)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running dask scheduler (tcp://host:8786), or 'synchronous'; default: a local cluster")
    p.add_argument("--workers", type=opt.WORKERS, default=None, metavar="N",
                   help="local cluster size (default: one worker per core); ignored with --scheduler")
    p.add_argument("--threads", action="store_true", help="local cluster of threads instead of processes")
    p.add_argument("--k", type=opt.count(512, why="a k x k sketch per adapter"), default=DEFAULT_K, help=f"sketch size: k x k per adapter (default {DEFAULT_K})")
    p.add_argument("--seed", type=opt.SEED, default=DEFAULT_SEED, help="global sketch seed (default 0)")
    p.add_argument("--top", type=opt.count(1024, low=0), default=DEFAULT_TOP, help="top singular values kept per module")
    p.add_argument("--batch", type=opt.count(10**5), default=32, metavar="N", help="adapters per Dask task (default 32)")
    p.add_argument("--json", action="store_true", help="print the scan report as JSON")
    p.set_defaults(func=run)


def quiet_dask(level: int = logging.WARNING) -> None:
    """Dask's loggers at WARNING and above, here and in the worker processes it spawns (they inherit the
    environment). Importing `distributed` sets its logger from dask's config (INFO), so the level is set after."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    import distributed  # noqa: F401

    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(level)


def run(args: argparse.Namespace) -> int:
    from analysis.export.outdir import check_out_place
    from analysis.population.scheduler import parse_scheduler, probe
    from analysis.population.walk import check_roots

    check_roots(args.roots)
    check_out_place(args.out)  # before any walking or sketching
    if args.scheduler not in (None, SYNCHRONOUS):
        probe(parse_scheduler(args.scheduler))  # one line, within seconds, before the index is touched
    config = SketchConfig(k=args.k, seed=args.seed, top=args.top)
    if not args.verbose:  # dask's own INFO lines (scheduler/worker start and stop) would bury the progress bar
        quiet_dask()
    with writer_lock(args.out, "scan"), \
            tqdm(total=0, desc="scan", unit="adapter", file=sys.stderr, mininterval=1.0, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = scan(args.roots, args.out, config=config, scheduler=args.scheduler, workers=args.workers,
                      processes=not args.threads, batch_size=args.batch, progress=progress)
    if args.json:
        json.dump(report.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    where = "synchronous" if args.scheduler == SYNCHRONOUS else (args.scheduler or "local cluster")
    print(f"{report.total} adapters in {args.out}: {report.sketched} sketched, {report.reused} unchanged, "
          f"{report.duplicates} duplicates of stored content, {len(report.failed)} unreadable "
          f"({report.seconds:.1f} s, {where})")
    for path, reason in report.failed:
        print(f"  unreadable: {_clean(path)}: {_clean(reason)}")
    for path, reason in report.unlisted:
        print(f"  not scanned: {_clean(path)}: {_clean(reason)}")
    print_bases(report)
    return 0


def print_bases(report) -> None:
    """The bases found (never compared with each other), what left the index, and what was repaired."""
    if report.removed:
        print(f"  {report.removed} adapter(s) of the previous scan are gone and left the index")
    for base in report.bases:
        print(f"  base {_clean(base['base_model']) or '(none named)'} [layout {base['layout'][:8]}]: "
              f"{base['adapters']} adapter{'s' if base['adapters'] != 1 else ''}")
    for line in report.repaired:
        print(f"  repaired: {_clean(line)}")
