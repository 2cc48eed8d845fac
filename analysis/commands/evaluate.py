"""`adapter-atlas evaluate ADAPTER... [--model M] [--data PATH]... [--metric exact|nll|both] [--json]`.

Exact-match accuracy and/or teacher-forced answer NLL of each adapter (and with --base the bare model) on
task data, through `analysis.evaluation`. Without --model the sample base; without --data the sample tasks.
Order of work: the data files are read and validated, the adapters read, the model loaded, every adapter
checked to fit it (modules and shapes), and only then is anything evaluated.
JSON (stdout): {"tasks": [...], "results": {name: {task: {"accuracy", "n", "correct", "examples"[, "nll",
"perplexity", "tokens"]}}}, "metric", "model": {identity}, "data": [{task, file, sha256, rows, n, metric}],
"warnings": [...]}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from analysis.commands import options as opt
from analysis.errors import AdapterFormatError, AtlasError


def add_model_arguments(p: argparse.ArgumentParser, *, flag: str = "--model") -> None:
    """--model/--revision/--device/--model-dtype: the model spec every measuring command accepts (`--dtype` is the
    stored precision of an export, on the commands that write one)."""
    p.add_argument(flag, default=None, metavar="PATH|ID",
                   help="local transformers folder, .gguf file, or a model id already in the local Hugging Face "
                        "cache (never downloaded); default: the sample base")
    p.add_argument("--revision", default=None, help="revision of a cached model id (default: the cached main)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--model-dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: float32 on cpu, bfloat16 on cuda, float16 on mps")


def model_spec(args: argparse.Namespace, source: str | None) -> Any:
    from analysis.evaluation import ModelSpec

    return ModelSpec(source=source, device=args.device, dtype=args.model_dtype, revision=args.revision)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="exact match and/or answer NLL of adapters on your model and data (default: the samples)",
        description="Evaluate adapters on a base model (the sample base, a local folder, a GGUF file or a model "
                    "in the local Hugging Face cache) and task data (JSONL: prompt/answer, prompt/completion, "
                    "chat messages, text).")
    p.add_argument("paths", nargs="*", metavar="ADAPTER", help="adapter directories or weights files")
    add_model_arguments(p)
    p.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="a JSONL file, a folder DIR/<task>/eval.jsonl or DIR/*.jsonl, or a YAML mapping "
                        "(repeatable; default: the sample tasks)")
    p.add_argument("--metric", default="exact", choices=("exact", "nll", "both"),
                   help="exact match by greedy generation, teacher-forced answer NLL, or both (default exact; a "
                        "mapping file's per-task metric wins)")
    p.add_argument("--base", action="store_true", help="also evaluate the base model alone")
    p.add_argument("--tasks", default=None, metavar="T1,T2", help="comma-separated task names (default: all)")
    p.add_argument("--limit", type=opt.EVAL_LIMIT, default=None, metavar="N", help="first N rows per task")
    p.add_argument("--batch-size", type=opt.BATCH, default=32, metavar="B")
    p.add_argument("--json", action="store_true", help="print all results (with example predictions) as JSON")
    p.set_defaults(func=run)


def load_task_data(args: argparse.Namespace) -> Any:
    """The validated task set of --data/--metric/--tasks (before any model loads)."""
    from analysis.evaluation import load_data

    data = load_data(args.data, metric=args.metric)
    if args.tasks:
        data = data.select([t.strip() for t in args.tasks.split(",") if t.strip()])
    return data


def _cell(score: dict[str, Any] | None, metric: str) -> str:
    if score is None:
        return "-"
    parts = []
    if metric in ("exact", "both") and score.get("accuracy") is not None:
        parts.append(f"{score['accuracy']:.3f}")
    if metric in ("nll", "both") and score.get("nll") is not None:
        parts.append(f"nll {score['nll']:.3f}")
    return " / ".join(parts) or "-"


def table(tasks: list[str], results: dict[str, dict[str, Any]], metrics: dict[str, str]) -> str:
    names = list(results)
    cells = {(n, t): _cell(results[n].get(t), metrics[t]) for n in names for t in tasks}
    width = max(len(t) for t in tasks + ["task"])
    cols = [max([len(n), 6] + [len(cells[(n, t)]) for t in tasks]) for n in names]
    lines = ["task".ljust(width) + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols))]
    for t in tasks:
        lines.append(t.ljust(width) + "  " + "  ".join(cells[(n, t)].rjust(c) for n, c in zip(names, cols)))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from analysis.evaluation import Evaluator, load_model
    from analysis.workflow.adapter_set import AdapterSet

    if not args.paths and not args.base:
        raise AtlasError("nothing to evaluate: give adapter paths and/or --base")
    if args.limit is not None and args.limit < 1:
        raise AtlasError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise AtlasError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec = model_spec(args, args.model)  # a bad device/dtype is refused before anything is read
    data = load_task_data(args)  # every data file validated before the model loads
    for p in args.paths:
        if not Path(p).exists():
            raise AdapterFormatError(f"{p}: no such file or directory")
    adapters = list(AdapterSet.from_paths(args.paths).adapters) if args.paths else []
    print(f"loading the model ({args.model or 'the sample base'})...", file=sys.stderr)
    ev = Evaluator(load_model(spec), data, limit=args.limit, batch_size=args.batch_size)
    warnings = ev.check(adapters)  # every module fits, before any evaluation
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    jobs: list[tuple[str, Any, list[str], Any]] = [("base", {}, data.names, "base")] if args.base else []
    jobs += [(a.name, a.modules, data.for_adapter(a), ("adapter", a.sha256)) for a in adapters]
    results: dict[str, dict[str, Any]] = {}
    total = sum(len(j[2]) for j in jobs)
    with tqdm(total=total, desc="evaluate", unit="task", file=sys.stderr, disable=None) as bar:
        for name, deltas, tasks, key in jobs:
            results[name] = {}
            for task in tasks:
                bar.set_postfix_str(f"{name} / {task}", refresh=False)
                results[name][task] = ev.score(deltas, [task], key=key)[task].as_dict()
                bar.update(1)
    ident = ev.identity
    if args.json:
        json.dump({"tasks": data.names, "results": results, "metric": args.metric, "model": ident.as_dict(),
                   "data": ev.records(), "warnings": warnings}, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
        return 0
    print(f"model: {ident.line()}")
    for r in ev.records():
        print(f"data:  {r['task']}: {r['file']} (sha256 {r['sha256'][:12]}..., {r['n']} of {r['rows']} rows, "
              f"{r['metric']})")
    print(table(data.names, results, {t.name: t.metric for t in data.tasks}))
    print("(exact: share of rows whose greedy answer matches exactly; nll: answer NLL in nats per token, lower "
          "is better)")
    return 0
