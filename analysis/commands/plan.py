"""`adapter-atlas plan`: the fewest merged adapters that keep every task at --min-retention of its own adapter.

    adapter-atlas plan sample_adapters/{format,math,text}_* --min-retention 0.9 --out plan/    # data-free (reach on the model)
    adapter-atlas plan sample_adapters/{format,math,text}_* --weights-only --out plan/        # data-free, no model
    adapter-atlas plan sample_adapters/{format,math,text}_* --min-retention 0.9 --data sample_adapters/tasks --out plan/
    adapter-atlas plan sample_adapters/{format,math,text}_* --prompts sample_adapters/tasks --out plan/        # data-light
    adapter-atlas plan my_adapters/* --model models/my-llama --data my_tasks.yaml --out plan/

Writes one PEFT adapter per group into --out and plan.json (groups, tasks, method, parameters, predicted and,
with --data, measured retention on --model, default the sample base; every tried group with its verdict;
`measured_on`: model identity and data files). An adapter's task: a mapping file's (by path or sha256),
else the task named like its folder. With --data each group is screened by answer NLL first and only groups
that pass are verified by exact match (--no-screen: exact match for every group).
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
    p.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="task data (DIR/<task>/eval.jsonl, JSONL files or a YAML mapping): verify by evaluation")
    p.add_argument("--weights-only", action="store_true",
                   help="decide from the weights-only estimate and load no model (default without --prompts: the "
                        "data-free reach estimate on --model, which reads no task data)")
    p.add_argument("--prompts", action="extend", nargs="+", default=None, metavar="PATH",
                   help="unlabeled prompts per task (the forms of --data; answers are not read): decide from the "
                        "data-light estimate on --model instead of the data-free one (--data still verifies)")
    from analysis.commands.evaluate import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--no-screen", action="store_true",
                   help="verify every group by exact match (default: answer NLL first, exact match for the groups "
                        "that pass)")
    p.add_argument("--limit", type=opt.EVAL_LIMIT, default=32, help="eval rows per task when verifying (default 32)")
    p.add_argument("--max-trials", type=opt.count(10**4), default=None,
                   help="most group merges tried (default 20 with --data, each verified by evaluation; 100 without: "
                        "a prediction costs seconds)")
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
    from analysis.commands.evaluate import model_spec
    from analysis.workflow import AdapterSet

    spec = model_spec(args, args.model)
    use_reach = args.prompts is None and not args.weights_only
    if args.weights_only and args.prompts is not None:
        raise AtlasError("--weights-only and --prompts: pick one estimate (the prompts decide when given)")
    if use_reach:
        from analysis.predict import REACH, load_calibrations

        if REACH not in load_calibrations():
            raise AtlasError("no calibrated reach estimate is shipped (analysis/data/retention_calibration.json): "
                             "pass --weights-only (or --prompts) to plan without it")
    evaluator = evaluate = screen = forecast = loaded = None
    if args.data is not None:  # every data file validated, and every adapter given its task, before the model loads
        from analysis.evaluation import load_data

        data = load_data(args.data, metric="both")
    if args.prompts is not None:
        from analysis.evaluation import load_prompts

        prompts = load_prompts(args.prompts)
    adapters = list(AdapterSet.from_paths(args.paths).adapters)  # the one naming rule: run1/adapter, run2/adapter
    if args.prompts is not None:
        from analysis.evaluation import load_model
        from analysis.forecast import Forecast

        for a in adapters:
            prompts.own_task(a)  # every adapter has prompts of its own, or one line naming it
        print(f"loading the model ({args.model or 'the sample base'})...", file=sys.stderr)
        loaded = load_model(spec)
        loaded.check_fit(adapters)
        forecast = Forecast(loaded, prompts)
    if args.data is not None:
        from analysis.evaluation import Evaluator, load_model
        from analysis.plan.measured import plan_measures

        data = data.select(list(dict.fromkeys(data.own_task(a) for a in adapters)))
        for t in data.tasks:
            if "exact" not in t.metrics:
                raise AtlasError(f"{t.path}: plan verifies by exact match: task '{t.name}' needs prompt/answer, "
                                 "prompt/completion or chat rows (it has text rows only)")
        if loaded is None:
            print(f"loading the model ({args.model or 'the sample base'})...", file=sys.stderr)
        evaluator = Evaluator(loaded or load_model(spec), data, limit=args.limit)
        for w in evaluator.check(adapters):
            print(f"warning: {w}", file=sys.stderr)
        evaluate, screen = plan_measures(evaluator, adapters)
    reach = None
    if use_reach:  # data-free on the model: reach on text the model writes itself (with --data: the predictions)
        from analysis.evaluation import load_model
        from analysis.reach import Reach

        if evaluator is not None:
            loaded = evaluator.loaded
        else:
            print(f"loading the model ({args.model or 'the sample base'}) for the data-free reach estimate...",
                  file=sys.stderr)
            try:
                loaded = load_model(spec)
                warnings = loaded.check_fit(adapters)
            except AtlasError as exc:  # one line, and the way out: plan estimates on a model by default
                raise AtlasError(f"{exc} (plan estimates on a model by default: pass --model for the adapters' "
                                 "base, or --weights-only)") from None
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
        reach = Reach(loaded)
    handler, logger = _Log(), logging.getLogger("analysis.plan.planner")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once on stderr, not again through the root handler
    try:
        from analysis.plan.planner import forecast_predictor, predicted_retention, reach_predictor

        predict = (forecast_predictor(forecast) if forecast is not None else reach_predictor(reach)
                   if reach is not None else predicted_retention)
        plan = Planner(args.min_retention, evaluate=evaluate, screen=None if args.no_screen else screen,
                       predict=predict, max_trials=args.max_trials or (20 if args.data else 100)).plan(adapters)
        if forecast is not None:
            plan.estimate_basis = "outputs"
            plan.estimate_on = {"model": forecast.loaded.identity.line(), "prompts": forecast.data.records(forecast.n)}
        elif reach is not None:
            from analysis.predict import REACH

            plan.estimate_basis, plan.estimate_on = REACH, reach.identity()
        if evaluator is not None:
            from analysis.plan.measured import measured_on

            plan.measured_on = measured_on(evaluator)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    from analysis.threads import bounded_threads

    with bounded_threads():  # this face's torch threads for the merges it writes
        data = export_plan(plan, adapters, out, force=args.force, dtype=args.dtype)
    if args.json:
        print(json.dumps(data, indent=2, default=float))
        return 0
    kind = (f"measured on {evaluator.identity.line()}" if evaluator is not None
            else "predicted (data-light, from prompts)" if forecast is not None
            else "predicted (data-free, reach)" if reach is not None else "predicted (data-free, weights only)")
    print(f"{len(adapters)} adapters -> {data['adapters_out']} at min retention {args.min_retention} ({kind}); "
          f"wrote {out}/plan.json")
    for g in data["groups"]:
        ret = g["measured"] or g["predicted"]
        print(f"  {g['path']:<48} {g['method']:<10} worst retention {min(ret.values()):.3f}")
    return 0
