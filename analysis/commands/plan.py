"""`adapter-atlas plan`: the fewest merged adapters that keep every task at --min-retention of its own adapter.

    adapter-atlas plan sample_adapters/{format,math,text}_* --min-retention 0.9 --out plan/                    # data-free
    adapter-atlas plan sample_adapters/{format,math,text}_* --min-retention 0.9 --data sample_adapters/tasks --out plan/

Writes one PEFT adapter per group into --out and plan.json (groups, tasks, method, parameters, predicted and,
with --data, measured retention; every tried group with its verdict). Task = adapter directory name.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from analysis.commands import options as opt
from analysis.errors import AtlasError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="partition adapters into the fewest merge groups that keep every task (--data verifies)",
        description="Plan merge groups from core overlap, capacity and the data-free preview; with --data, "
                    "verify every group by real evaluation and split until each task keeps the bar.")
    p.add_argument("paths", nargs="+", metavar="ADAPTER", help="adapter directories (name = task)")
    p.add_argument("--min-retention", type=opt.fraction(open_low=True), default=0.9, help="accuracy kept vs the own adapter (default 0.9)")
    p.add_argument("--data", default=None, metavar="DIR", help="task data DIR/<task>/eval.jsonl: verify by evaluation")
    p.add_argument("--limit", type=opt.EVAL_LIMIT, default=32, help="eval rows per task when verifying (default 32)")
    p.add_argument("--max-trials", type=opt.count(10**4), default=20, help="most group merges tried (default 20)")
    p.add_argument("--threads", type=opt.THREADS, default=1,
                   help="torch threads (default 1: on a shared CPU two threads spin-wait and run far slower)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="stored precision of the merged groups (default fp32; single adapters are copied as they are)")
    p.add_argument("--json", action="store_true", help="print plan.json to stdout")
    p.set_defaults(func=run)


class _Log(logging.Handler):
    """Planner decisions on stderr as they happen (the verification takes minutes)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"plan: {record.getMessage()}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import torch

    from analysis.export.outdir import check_out_dir
    from analysis.plan import Planner
    from analysis.plan.export import export_plan

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_out_dir(out, inputs=args.paths, force=args.force)  # before any planning (checked again when writing)
    if args.data is not None and not Path(args.data).is_dir():
        raise AtlasError(f"--data {args.data}: no such directory")
    from analysis.workflow import AdapterSet

    adapters = list(AdapterSet.from_paths(args.paths).adapters)  # the one naming rule: run1/adapter, run2/adapter
    evaluate = None
    if args.data is not None:
        from analysis.base_model import load_base_model
        from analysis.consolidate.evaluator import TaskEvaluator

        model, tokenizer = load_base_model()
        evaluate = TaskEvaluator(model, tokenizer, args.data, limit=args.limit)
    handler, logger = _Log(), logging.getLogger("analysis.plan.planner")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once on stderr, not again through the root handler
    try:
        plan = Planner(args.min_retention, evaluate=evaluate, max_trials=args.max_trials).plan(adapters)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    data = export_plan(plan, adapters, out, force=args.force, dtype=args.dtype)
    if args.json:
        print(json.dumps(data, indent=2, default=float))
        return 0
    kind = "measured" if plan.own_accuracy is not None else "predicted (data-free)"
    print(f"{len(adapters)} adapters -> {data['adapters_out']} at min retention {args.min_retention} ({kind}); "
          f"wrote {out}/plan.json")
    for g in data["groups"]:
        ret = g["measured"] or g["predicted"]
        print(f"  {g['path']:<48} {g['method']:<10} worst retention {min(ret.values()):.3f}")
    return 0
