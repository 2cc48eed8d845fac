"""`adapter-atlas compact --index DIR [--json]`: rewrite a population index without what left it.

Sketch parts keep the rows of adapters that were deleted or changed since they were scanned (queries never
return them); compaction rewrites the parts with only the sketches the catalog refers to and rebuilds the
approximate neighbour index from scratch (retrained on the current population). Safe to kill at any point:
new parts are complete before the old ones are removed. Holds the index's writer lock (no scan meanwhile).
"""
from __future__ import annotations

import argparse
import json
import sys

from analysis.population.ann import sync_index
from analysis.population.lock import writer_lock
from analysis.population.store import IndexStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compact", help="rewrite a population index without the sketches of deleted or changed adapters",
        description="Rewrite the Parquet parts of an index with only the sketches its catalog refers to, and "
                    "rebuild its approximate neighbour index.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory written by `adapter-atlas scan`")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = IndexStore.open(args.index)  # an index must exist (the lock would create a folder)
    with writer_lock(args.index, "compact"):
        store = IndexStore.open(args.index)
        before = len(store.part_files())
        kept, dropped = store.compact()
        ann = sync_index(store, rebuild=True)
    report = {"kept": kept, "dropped": dropped, "parts_before": before, "parts_after": len(store.part_files()),
              "ann": ann}
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{args.index}: {kept} sketches kept, {dropped} dropped; {before} parts -> {report['parts_after']}; "
              f"approximate index rebuilt ({ann['groups']} base{'s' if ann['groups'] != 1 else ''})")
    return 0
