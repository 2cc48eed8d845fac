"""`adapter-atlas families --index DIR [--families K | --threshold T] [--json]`: adapter families of a population.

JSON (stdout): {"labels": {PATH: int, ...} (0 = largest family), "sizes": [n per label], "families": K,
"method": "...", "unreadable": {PATH: reason}}. Without --json, one line per family with a few members.
"""
from __future__ import annotations

import argparse
import json
import sys

from analysis.commands import options as opt
from analysis.commands.overlap import _clean
from analysis.population.query import DEFAULT_SAMPLE, DEFAULT_THRESHOLD, families, open_population


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "families", help="group a scanned population into families of similar adapters",
        description="Average-linkage clustering (cosine) of the sketches of a sample, every adapter then "
                    "joining the nearest family centroid.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory written by `adapter-atlas scan`")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--families", type=opt.count(), default=None, metavar="K", help="exactly K families")
    cut.add_argument("--threshold", type=opt.fraction(high=2.0, why="a cosine distance"), default=DEFAULT_THRESHOLD, metavar="T",
                     help=f"cosine distance at which families stop merging (default {DEFAULT_THRESHOLD})")
    p.add_argument("--sample", type=opt.count(10**7, low=2), default=DEFAULT_SAMPLE, metavar="N",
                   help=f"adapters clustered directly (default {DEFAULT_SAMPLE}); the rest join by centroid")
    p.add_argument("--json", action="store_true", help="print labels per path as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pop = open_population(args.index)
    fam = families(pop, n_families=args.families, threshold=args.threshold, sample=max(1, args.sample))
    if args.json:
        json.dump({"labels": {p: int(lab) for p, lab in zip(pop.paths, fam.labels)}, "sizes": fam.sizes,
                   "families": len(fam.sizes), "method": fam.method,
                   "unreadable": {p: r for p, r in pop.failed}}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"{len(fam.sizes)} families among {len(pop)} adapters ({fam.method})")
    for label, size in enumerate(fam.sizes):
        members = [pop.paths[i] for i in range(len(pop)) if fam.labels[i] == label]
        shown = ", ".join(_clean(m) for m in members[:3]) + (", ..." if size > 3 else "")
        print(f"  family {label}: {size} adapter{'' if size == 1 else 's'}: {shown}")
    if pop.failed:
        print(f"{len(pop.failed)} unreadable at scan time (see `adapter-atlas scan`)")
    return 0
