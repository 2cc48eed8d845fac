"""`adapter-atlas neighbors ADAPTER --index DIR [-k 10] [--exact] [--json]`: most similar adapters of a population.

JSON (stdout): {"query": PATH, "exact": bool, "neighbors": [{"adapter": PATH, "similarity": x}, ...]}, best
first; similarity is the sketch estimate of the aggregated cosine, or with --exact the exact factored cosine
of the re-ranked candidates (then each row also has "sketch_similarity"). ADAPTER need not be in the index.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.commands import options as opt
from analysis.commands.overlap import _clean, limit_threads
from analysis.errors import AdapterFormatError, AtlasError
from analysis.population.query import neighbors, open_population


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "neighbors", help="nearest adapters of one adapter in a population index",
        description="Cosine nearest neighbours from the sketches of a scanned population; --exact re-ranks "
                    "the best candidates by the exact factored cosine.")
    p.add_argument("adapter", metavar="ADAPTER", help="adapter directory or file (scanned or not)")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory written by `adapter-atlas scan`")
    p.add_argument("-k", type=opt.count(), default=10, help="how many neighbours (default 10)")
    p.add_argument("--exact", action="store_true", help="re-rank the top candidates by the exact cosine")
    p.add_argument("--candidates", type=opt.count(10**7), default=None, metavar="N",
                   help="candidates re-ranked with --exact (default: all within 4 noise spreads of the k-th, <= 1000)")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise AtlasError(f"-k must be at least 1, got {args.k}")
    if not Path(args.adapter).exists():
        raise AdapterFormatError(f"{args.adapter}: no such file or directory")
    limit_threads()
    pop = open_population(args.index)
    query = str(Path(args.adapter).resolve())
    rows = neighbors(pop, query, args.k, exact=args.exact, candidates=args.candidates)
    if args.json:
        json.dump({"query": query, "exact": args.exact, "neighbors": rows}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    kind = "exact cosine" if args.exact else "sketch cosine"
    print(f"{len(rows)} nearest of {_clean(query)} among {len(pop)} adapters ({kind})")
    for row in rows:
        extra = f"  (sketch {row['sketch_similarity']:.4f})" if "sketch_similarity" in row else ""
        print(f"  {row['similarity']:.4f}  {_clean(row['adapter'])}{extra}")
    return 0
