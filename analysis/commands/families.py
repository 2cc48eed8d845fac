"""`adapter-atlas families --index DIR [--families K | --threshold T] [--exact] [--json]`: adapter families.

JSON (stdout): {"labels": {PATH: int, ...} (0 = largest family), "sizes": [n per label], "cohesion": [mean
pairwise cosine per label, null for one], "bases": [base per label], "families": K, "method": "...",
"per_base": [{"base_model", "layout", "adapters", "noise", "cut", "unresolved", ...}], "warnings": [...],
"unreadable": {PATH: reason}}. Without --json, one line per family with its cohesion and a few members.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from analysis.commands import options as opt
from analysis.commands.overlap import _clean
from analysis.errors import AtlasError
from analysis.population.families import DEFAULT_NEIGHBOURS, DEFAULT_SAMPLE, families
from analysis.population.query import open_population


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "families", help="group a scanned population into families of similar adapters",
        description="Connected components of every adapter's nearest-neighbour graph, keeping the edges above "
                    "the chance level measured on random pairs of the index (each base separately).")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory written by `adapter-atlas scan`")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--families", type=opt.count(), default=None, metavar="K", help="exactly K families")
    cut.add_argument("--threshold", type=opt.fraction(high=2.0, why="a cosine distance"), default=None, metavar="T",
                     help="cosine distance cut set by hand (default: chance level measured on the index)")
    p.add_argument("--sample", type=opt.count(10**7, low=2), default=DEFAULT_SAMPLE, metavar="N",
                   help=f"adapters whose random pairs measure the chance level (default {DEFAULT_SAMPLE})")
    p.add_argument("--neighbours", type=opt.count(1000), default=DEFAULT_NEIGHBOURS, metavar="K",
                   help=f"nearest neighbours per adapter in the graph (default {DEFAULT_NEIGHBOURS})")
    p.add_argument("--exact", action="store_true",
                   help="re-rank the graph by the exact cosine (loads every adapter: thousands, not millions)")
    p.add_argument("--json", action="store_true", help="print labels per path as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.neighbours < 1:
        raise AtlasError(f"--neighbours must be at least 1, got {args.neighbours}")
    pop = open_population(args.index)
    fam = families(pop, n_families=args.families, threshold=args.threshold, sample=max(1, args.sample),
                   neighbours=args.neighbours, exact=args.exact)
    if args.json:
        json.dump({"labels": {p: int(lab) for p, lab in zip(pop.paths, fam.labels)}, "sizes": fam.sizes,
                   "cohesion": fam.cohesion, "bases": fam.base, "families": len(fam.sizes), "method": fam.method,
                   "per_base": fam.per_base, "warnings": fam.warnings,
                   "unreadable": {p: r for p, r in pop.failed}}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"{len(fam.sizes)} families among {len(pop)} adapters ({fam.method})")
    for facts in fam.per_base:
        print(f"  base {_clean(facts['base_model']) or '(none named)'} [{facts['layout'][:8]}]: {facts['adapters']} "
              f"distinct adapters, chance level {facts.get('centre')} +- {facts['noise']}, cut {facts['cut']}")
    order = np.argsort(fam.labels, kind="stable")
    bounds = np.cumsum([0, *fam.sizes])
    for label, size in enumerate(fam.sizes):
        members = [pop.paths[i] for i in order[bounds[label]:bounds[label] + 3]]
        shown = ", ".join(_clean(m) for m in members) + (", ..." if size > 3 else "")
        cohesion = "" if fam.cohesion[label] is None else f" (cohesion {fam.cohesion[label]:.3f})"
        print(f"  family {label}: {size} adapter{'' if size == 1 else 's'}{cohesion}: {shown}")
    for line in fam.warnings:
        print(f"warning: {_clean(line)}", file=sys.stderr)
    if pop.failed:
        print(f"{len(pop.failed)} unreadable at scan time (see `adapter-atlas scan`)")
    return 0
