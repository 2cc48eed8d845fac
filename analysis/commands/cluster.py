"""`adapter-atlas cluster PATH... [--groups K | --threshold T] [--metric M] [--linkage average|complete] [--json]`.

JSON (stdout): {"adapters", "labels", "linkage" (scipy's (N-1) x 4 matrix), "order" (dendrogram
leaves), "distance" (N x N), "metric", "method"}. Without --json, the groups one per line.
"""
from __future__ import annotations

import argparse
import json
import sys

from analysis.clustering import DISTANCE_METRICS, Linkage, adapter_distance
from analysis.commands import options as opt
from analysis.commands.overlap import _clean, compute_table, limit_threads, load_named

DEFAULT_THRESHOLD = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cluster", help="group adapters by how much they overlap",
        description="Hierarchical clustering of adapters on an energy-weighted overlap distance.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="adapter directories or files (two or more)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--groups", type=opt.count(), default=None, metavar="K", help="cut into exactly K groups")
    cut.add_argument("--threshold", type=opt.fraction(), default=None, metavar="T",
                     help=f"merge clusters closer than distance T in [0, 1] (default {DEFAULT_THRESHOLD})")
    p.add_argument("--metric", default="cosine", choices=DISTANCE_METRICS,
                   help="cosine: 1-|cos|; subspace: 1-phi; energy: 1-mean energy overlap; angle: mean angle/90")
    p.add_argument("--linkage", default="average", metavar="METHOD", help="average (default) or complete")
    p.add_argument("--modules", default=None, metavar="REGEX", help="only modules whose name matches (re.search)")
    p.add_argument("--json", action="store_true", help="print labels, linkage and distances as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = Linkage(args.linkage)
    if args.linkage not in ("average", "complete"):
        model.fit([[0.0]])  # raises the one-line explanation before any loading
    limit_threads()
    adapters = load_named(args.paths)
    table = compute_table(adapters, args.modules)
    names = [a.name for a in adapters]
    D = adapter_distance(table, args.metric)  # (N, N)
    model.fit(D, names)
    threshold = DEFAULT_THRESHOLD if args.groups is None and args.threshold is None else args.threshold
    labels = model.cut(k=args.groups, threshold=threshold)
    if args.json:
        json.dump({
            "adapters": names, "labels": labels.tolist(), "linkage": model.linkage_.tolist(),
            "order": model.order_.tolist(), "distance": D.tolist(), "metric": args.metric, "method": args.linkage,
        }, sys.stdout)
        sys.stdout.write("\n")
        return 0
    rule = f"{args.groups} groups" if args.groups is not None else f"distance threshold {threshold}"
    print(f"{len(set(labels.tolist()))} groups of {len(names)} adapters ({args.metric} distance, {args.linkage} linkage, {rule})")
    for g in sorted(set(labels.tolist())):
        print(f"  group {g}: " + ", ".join(_clean(n) for n, l in zip(names, labels) if l == g))
    return 0
