"""`adapter-atlas review ...`: propose merges, comment, decide, list, show and export reports.

Every subcommand takes `--db` (a file path or any SQLAlchemy URL; default `$ADAPTER_ATLAS_DB`, else
`~/.local/share/adapter-atlas/review.db`). `propose` prints the new id alone on stdout (its last
line), so `ID=$(adapter-atlas review propose ...)` works. An unknown id exits 2 with one line.
"""
from __future__ import annotations

import argparse
import json
import sys

from analysis.errors import ReviewError
from analysis.review import DECISIONS, ReviewStore, propose
from analysis.review.escape import terminal_block, terminal_text
from analysis.review.store import check_id

DB_HELP = ("review store: a SQLite file path or a SQLAlchemy URL (postgresql://...); "
           "default $ADAPTER_ATLAS_DB, else ~/.local/share/adapter-atlas/review.db")


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, metavar="URL", help=DB_HELP)
    parser = subparsers.add_parser("review", help="team review of merge decisions",
                                   description="Propose merge recipes for review, discuss and decide them.")
    sub = parser.add_subparsers(dest="review_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("propose", parents=[common], help="open a proposal for a merge recipe")
    p.add_argument("recipe", metavar="RECIPE", help="recipe.yaml or the merge output directory holding it")
    p.add_argument("--title", required=True)
    p.add_argument("--author", required=True)
    p.add_argument("--preview", default=None, metavar="JSON",
                   help="merge preview JSON (default: preview.json beside the recipe, when present)")
    p.set_defaults(func=_propose)

    p = sub.add_parser("comment", parents=[common], help="add a comment to a proposal")
    p.add_argument("id", type=_proposal_id, metavar="ID")
    p.add_argument("--author", required=True)
    p.add_argument("--text", required=True)
    p.set_defaults(func=_comment)

    p = sub.add_parser("decide", parents=[common], help="approve, reject or request changes")
    p.add_argument("id", type=_proposal_id, metavar="ID")
    p.add_argument("--author", required=True)
    p.add_argument("--decision", required=True, choices=sorted(DECISIONS))
    p.add_argument("--rationale", required=True)
    p.set_defaults(func=_decide)

    p = sub.add_parser("list", parents=[common], help="list proposals with their status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", parents=[common], help="show a proposal and its whole history")
    p.add_argument("id", type=_proposal_id, metavar="ID")
    p.add_argument("--json", action="store_true", help="print the proposal as JSON")
    p.set_defaults(func=_show)

    p = sub.add_parser("export", parents=[common], help="write an offline HTML report or a Markdown summary")
    p.add_argument("id", type=_proposal_id, metavar="ID")
    p.add_argument("--format", required=True, choices=["html", "md"])
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true",
                   help="replace an existing FILE (an input of the proposal is refused even so)")
    p.set_defaults(func=_export)


def _proposal_id(text: str) -> int:
    """argparse type: a proposal id the store can look up (one line, exit 2, for 99999999999999999999)."""
    try:
        return check_id(int(text))
    except (ValueError, ReviewError) as exc:
        raise argparse.ArgumentTypeError(f"invalid proposal id {text[:40]!r}: whole numbers from 1 to 2^63-1") from exc


def _store(args: argparse.Namespace) -> ReviewStore:
    return ReviewStore(args.db)


def _propose(args: argparse.Namespace) -> int:
    with _store(args) as store:
        pid = propose(store, args.recipe, args.title, args.author, preview=args.preview)
        print(f"opened proposal {pid} in {store.display_url}", file=sys.stderr)
    print(pid)
    return 0


def _comment(args: argparse.Namespace) -> int:
    with _store(args) as store:
        eid = store.add_comment(args.id, author=args.author, text=args.text)
    print(f"comment {eid} added to proposal {args.id}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    with _store(args) as store:
        store.add_decision(args.id, author=args.author, decision=args.decision, rationale=args.rationale)
        status = store.get(args.id).status
    print(f"proposal {args.id} is now {status}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = store.list_proposals()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    table = [["id", "title", "author", "status", "updated"]]
    table += [[str(r.id), terminal_text(r.title, 48), terminal_text(r.author, 24), r.status, r.updated_at[:19]]
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not rows:
        print("(no proposals yet)", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        p = store.get(args.id)
    if args.json:
        print(json.dumps(p.to_json(), indent=2))
        return 0
    print(f"#{p.id} {terminal_text(p.title)}  [{p.status}]")
    print(f"opened by {terminal_text(p.author)} on {p.created_at}; method {terminal_text(p.method)}; "
          f"recipe sha256 {p.recipe_sha256}")
    print("inputs:")
    for i in p.inputs:
        print(f"  {terminal_text(i.name)}  {terminal_text(i.format)}  {i.sha256}  {terminal_text(i.path)}")
    print(f"preview snapshot: {'yes' if p.preview is not None else 'none'}")
    print("history:")
    for e in p.events:
        what = {"created": "opened", "comment": "commented"}.get(e.kind, f"decided {DECISIONS.get(e.decision or '')}")
        print(f"  [{e.id}] {e.created_at[:19]} {terminal_text(e.author)} {what}")
        if e.kind != "created":
            print("      " + terminal_block(e.text).replace("\n", "\n      "))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.export.outdir import check_out_file
    from analysis.review.evidence import input_overlap
    from analysis.review.reports import write_report

    with _store(args) as store:
        p = store.get(args.id)
    check_out_file(args.out, inputs=[i.path for i in p.inputs if i.path], force=args.force)  # before the overlap work
    with tqdm(desc="overlap of the inputs", unit="module", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int, _module: str) -> None:
            bar.total = total
            bar.update(done - bar.n)
        overlap = input_overlap(p, progress=progress)
    if not overlap.available:
        print(f"note: {overlap.reason}", file=sys.stderr)
    out = write_report(p, args.format, args.out, overlap, force=args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0
