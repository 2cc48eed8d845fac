"""`adapter-atlas merge`: merge adapters with a registered method and export what PEFT, diffusers or kohya load.

    adapter-atlas merge A B C --method isolation --out merged/          # dense: automatic export rank
    adapter-atlas merge A B C --method isolation --rank 16 --out merged/
    adapter-atlas merge --recipe merged/recipe.yaml --out again/      # replay; refuses changed inputs
    adapter-atlas merge --list-methods                                  # methods and declared parameters
    adapter-atlas merge A B --method linear --out merged/ --eval --model models/my-llama --data tasks.yaml

A thin face over `analysis.workflow.run_merge` (the same pipeline the app and the review use): this
file parses arguments, draws progress bars (stderr) and prints the summary (stdout, `--json` for
scripts). Dense results get the smallest export rank whose relative Frobenius error is at most
`--target-error` (capped at the summed input rank); `--rank` overrides it. `--eval` adds the measure step:
the adapter written, each input and the base scored on --model (default the sample base) and --data
(default the sample tasks); the rows, the model identity and the data hashes go into preview.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from analysis.commands import options as opt
from analysis.errors import RecipeError
from analysis.export import load_recipe, load_recipe_inputs, recipe_sha256
from analysis.export.outdir import check_out_dir, recipe_input_paths
from analysis.export.recipe import EXPORT_DTYPE_NAMES, EXPORT_FORMATS
from analysis.merge import describe_methods
from analysis.merge.registry import parse_param_strings
from analysis.workflow.coverage import MISSING_HELP, MISSING_MODULES
from analysis.workflow.evidence import METRIC_HELP, export_line, measured_lines, module_line
from analysis.workflow.rank import DEFAULT_TARGET_ERROR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge", help="merge adapters (isolation, ties, svd, ...) and export PEFT/kohya/delta",
        description="Merge adapters module by module on dW and export the result with its recipe.",
        epilog="Dense results (ties, dare_*, magnitude_prune, entry isolation) are exported at the smallest rank "
               "reaching --target-error (capped at the summed input rank) unless --rank is given.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="adapter directories or files")
    p.add_argument("--method", default=None, help="merge method (see --list-methods)")
    p.add_argument("--weights", default=None, metavar="W1,W2,...", help="one weight per adapter")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--rank", type=opt.EXPORT_RANK, default=None, help="re-factor every module to this rank for export")
    p.add_argument("--target-error", type=opt.fraction(open_low=True, open_high=True), default=DEFAULT_TARGET_ERROR, metavar="E",
                   help="automatic export rank: smallest rank with relative Frobenius error <= E "
                        f"(default {DEFAULT_TARGET_ERROR})")
    p.add_argument("--drop-extras", action="store_true",
                   help="drop the inputs' non-LoRA tensors (heads, DoRA magnitudes, biases) instead of refusing "
                        "when they differ")
    p.add_argument("--format", default="peft", choices=EXPORT_FORMATS,
                   help="export format (default peft): peft (PeftModel), diffusers (pipe.load_lora_weights), kohya "
                        "(A1111/Forge, ComfyUI, sd-scripts; also diffusers), delta (full dW per module)")
    p.add_argument("--dtype", default="fp32", choices=EXPORT_DTYPE_NAMES,
                   help="stored precision of the export (default fp32); its storage error is reported")
    p.add_argument("--missing-modules", default="zero", choices=MISSING_MODULES,
                   help="modules not every input has: " + "; ".join(f"{k}: {v}" for k, v in MISSING_HELP.items())
                        + " (default zero)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (refused if it exists)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--allow-different-bases", action="store_true",
                   help="merge adapters recorded for different base models anyway")
    p.add_argument("--recipe", default=None, metavar="FILE", help="replay a recipe.yaml instead of PATH/--method")
    p.add_argument("--no-preview", action="store_true", help="skip the data-free preview in preview.json")
    p.add_argument("--json", action="store_true", help="print the summary (with the preview per task) as JSON")
    p.add_argument("--list-methods", action="store_true", help="print the methods and their parameters")
    g = p.add_argument_group("measuring (--eval)")
    g.add_argument("--eval", action="store_true",
                   help="measure the adapter written, each input and the base on --model and --data; the rows go "
                        "into preview.json next to the data-free preview")
    from analysis.commands.evaluate import add_model_arguments

    add_model_arguments(g)
    g.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="task data for --eval: JSONL file, DIR/<task>/eval.jsonl, DIR/*.jsonl or a YAML mapping "
                        "(repeatable; default: the sample tasks)")
    g.add_argument("--metric", default="exact", choices=("exact", "nll", "both"), help="--eval metric (default exact)")
    g.add_argument("--limit", type=opt.EVAL_LIMIT, default=None, metavar="N", help="--eval: first N rows per task")
    g.add_argument("--reach", action="store_true",
                   help="data-free estimate on --model: each task's predicted retention from how far its own adapter "
                        "and what the merge adds to it move the model on text the model wrote (no task data), "
                        "instead of the weights-only estimate")
    g.add_argument("--prompts", action="extend", nargs="+", default=None, metavar="PATH",
                   help="unlabeled prompts per task (the forms of --data; answers are not read): each task's "
                        "predicted retention becomes the data-light estimate on --model (does the merge reproduce "
                        "the own adapter's answers), with its track record; without --eval nothing is scored")
    p.set_defaults(func=run)


class _Bars:
    """One tqdm bar per pipeline stage (merge, export rank, preview) on stderr; tqdm shows the ETA."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int, _eta: float | None, _label: str) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="module", file=sys.stderr, leave=False, disable=None)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise RecipeError(f"--weights '{text}': expected comma-separated numbers") from None


def list_methods() -> int:
    for m in describe_methods():
        exact = {True: "exact low rank", False: "dense: exported at an automatic or given rank"}.get(
            m["exact_lowrank"], "low rank or dense depending on parameters")
        print(f"{m['name']}: {m['help']} [{exact}]")
        for p in m["params"]:
            bounds = f" one of {'|'.join(p['choices'])}" if p["choices"] else (
                f" in [{p['low']}, {p['high']}]" if p["low"] is not None else "")
            print(f"    {p['name']} ({p['type']}, default {p['default']!r}{bounds}): {p['help']}")
    return 0


def _job(args: argparse.Namespace) -> tuple[Any, str, dict, list[float] | None, Any, Any]:
    """(adapter set, method, parameters, weights, export spec, preview) from the arguments or a recipe."""
    from analysis.workflow import AdapterSet, ExportSpec, preview_from_recipe

    if args.recipe:
        if args.paths or args.method:
            raise RecipeError("--recipe replays a recipe: do not also give PATH or --method")
        recipe = load_recipe(args.recipe)
        adapters = AdapterSet(tuple(load_recipe_inputs(recipe)), allow_different_bases=recipe.force)
        preview = preview_from_recipe(recipe) if not args.no_preview else False
        return adapters, recipe.method, recipe.parameters, recipe.weights, ExportSpec.from_recipe(recipe), preview
    if not args.paths or not args.method:
        raise RecipeError("merge needs PATH... and --method (or --recipe FILE, or --list-methods)")
    if args.rank is not None and args.rank < 1:
        raise RecipeError(f"--rank {args.rank}: expected a positive integer")
    if not 0.0 < args.target_error < 1.0:
        raise RecipeError(f"--target-error {args.target_error}: expected a relative error between 0 and 1")
    export = ExportSpec(format=args.format, rank=args.rank, target_error=args.target_error,
                        extras="drop" if args.drop_extras else "carry", dtype=args.dtype,
                        missing_modules=args.missing_modules)
    adapters = AdapterSet.from_paths(args.paths, allow_different_bases=args.allow_different_bases)
    return adapters, args.method, parse_param_strings(args.param), _weights(args.weights), export, not args.no_preview


def _check_extras(adapters: Any, export: Any) -> None:
    """Refuse extras that cannot be carried before any work, naming this face's flag."""
    from analysis.export.extras import plan_extras

    try:
        plan_extras(adapters.adapters, export.extras, export_format=export.format)
    except RecipeError as exc:
        raise RecipeError(f"{exc}: pass --drop-extras") from None


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        return list_methods()
    if not args.out:
        raise RecipeError("merge needs --out DIR")
    out = Path(args.out)
    check_out_dir(out, inputs=[*args.paths, *recipe_input_paths(args.recipe)], force=args.force)  # before any work
    from analysis.threads import bounded_threads
    from analysis.workflow import ProgressReporter, forecast_run, measure_run, reach_run, run_merge

    measure = _measure_data(args)  # data validated before anything is merged or loaded
    prompts = _prompts(args)
    adapters, method, params, weights, export, preview = _job(args)
    _check_extras(adapters, export)
    loaded = _load_model(args, adapters) if measure is not None or prompts is not None or args.reach else None
    if measure is not None:
        measure = _measure(loaded, measure, args.limit)
    forecast = _forecast(loaded, prompts, adapters) if prompts is not None else None
    bars = _Bars()
    try:
        with bounded_threads():  # this face's torch threads (ADAPTER_ATLAS_THREADS, else half the cores)
            merged = run_merge(adapters, method, params, weights, export, preview=preview,
                               progress=ProgressReporter(bars))
            if args.reach:
                from analysis.predict import REACH, load_calibrations
                from analysis.reach import Reach

                if REACH not in load_calibrations():
                    print("warning: no calibrated reach estimate is shipped: the weights-only estimate stays",
                          file=sys.stderr)
                merged = reach_run(merged, Reach(loaded), ProgressReporter(bars))
            if forecast is not None:
                merged = forecast_run(merged, forecast, ProgressReporter(bars))
            if measure is not None:
                merged = measure_run(merged, measure, ProgressReporter(bars))
    finally:
        bars.close()
    merged.write(out, force=args.force)
    summary = {"out": str(out), "method": method, "parameters": merged.result.params,
               "weights": merged.result.weights, "format": export.format, "rank": merged.rank,
               "modules": len(merged.result.modules), "recipe_sha256": recipe_sha256(merged.recipe),
               "module_policy": merged.evidence["modules"],
               **{k: merged.evidence[k] for k in ("inputs", "tasks", "export", "extras", "method_info")}}
    if "measured" in merged.evidence:
        summary["measured"] = merged.evidence["measured"]
    print(json.dumps(summary, indent=2, default=float) if args.json else _readable(summary))
    return 0


def _measure_data(args: argparse.Namespace) -> Any:
    """The validated task data of --eval (None without --eval); model options without --eval are refused."""
    if not args.eval:
        if args.data:
            raise RecipeError("--data measures the merge: add --eval (or give unlabeled --prompts for the estimate)")
        if args.model and not args.prompts and not args.reach:
            raise RecipeError("--model measures the merge (--eval) or estimates it (--reach, --prompts): add one")
        return None
    if args.limit is not None and args.limit < 1:
        raise RecipeError(f"--limit must be at least 1, got {args.limit}")
    from analysis.evaluation import load_data

    return load_data(args.data, metric=args.metric)


def _prompts(args: argparse.Namespace) -> Any:
    """The validated unlabeled prompts of --prompts (None without), read before any model loads."""
    if not args.prompts:
        return None
    from analysis.evaluation import load_prompts

    return load_prompts(args.prompts)


def _load_model(args: argparse.Namespace, adapters: Any) -> Any:
    """The model of --eval / --prompts, loaded once, every input checked to fit it (one line), before the merge."""
    from analysis.commands.evaluate import model_spec
    from analysis.evaluation import load_model

    print(f"loading the model ({args.model or 'the sample base'})...", file=sys.stderr)
    loaded = load_model(model_spec(args, args.model))
    for w in loaded.check_fit(adapters.adapters):
        print(f"warning: {w}", file=sys.stderr)
    return loaded


def _measure(loaded: Any, data: Any, limit: int | None) -> Any:
    """The Measure request on the loaded model."""
    from analysis.evaluation import Evaluator, Measure

    return Measure(Evaluator(loaded, data, limit=limit))


def _forecast(loaded: Any, prompts: Any, adapters: Any) -> Any:
    """The Forecast request; an input the prompts give no task of its own keeps the data-free estimate (said once)."""
    from analysis.errors import EvaluationDataError
    from analysis.forecast import Forecast

    for a in adapters.adapters:
        try:
            prompts.own_task(a)
        except EvaluationDataError as exc:
            print(f"note: {exc}; its estimate stays data-free", file=sys.stderr)
    return Forecast(loaded, prompts)


def _readable(summary: dict[str, Any]) -> str:
    """The summary as a person reads it: where it went, what was merged, the export fidelity, the preview."""
    params = ", ".join(f"{k}={v}" for k, v in summary["parameters"].items()) or "defaults"
    lines = [f"wrote {summary['out']} ({summary['format']}, {summary['modules']} modules, "
             f"rank {summary['rank'] or 'exact'})",
             f"method: {summary['method']} ({params}); weights {summary['weights']}",
             export_line(summary) or "",
             *(["the automatic rank stops at the cap: pass --rank R above it (merged again at that rank) or "
                 "--format delta (exact)"] if summary["export"].get("reached") is False else []),
             module_line({"modules": summary["module_policy"]}) or "",
             f"recipe sha256: {summary['recipe_sha256']}"]
    extras = summary["extras"]
    if extras["carried"] or extras["dropped"]:
        lines.append(f"extras: {len(extras['carried'])} carried, {len(extras['dropped'])} dropped")
    tasks = summary.get("tasks")
    if tasks:
        width = max(len(t["name"]) for t in tasks)
        lines += ["", f"{'task':<{width}}  predicted retention  core kept  interference  cosine  conflicts"]
        for t in tasks:
            conflicts = t.get("conflicts")
            lines.append(f"{t['name']:<{width}}  {_predicted(t.get('predicted_retention')):>19}  "
                         f"{_f(t.get('core_retention'), 9)}  {_f(t.get('interference'), 12)}  "
                         f"{_f(t.get('cosine'), 6)}  {conflicts if conflicts is not None else 'n/a':>9}")
        lines.append(f"core kept: {METRIC_HELP['core_retention']}; interference: {METRIC_HELP['interference']}")
        lines += _track_lines(tasks)
    if summary.get("measured"):
        lines += ["", *measured_lines(summary["measured"])]
    return "\n".join(lines)


def _predicted(pred: dict[str, Any] | None) -> str:
    return f"{pred['value']:.2f} [{pred['low']:.2f}, {pred['high']:.2f}]" if pred else "n/a"


def _track_lines(tasks: list[dict[str, Any]]) -> list[str]:
    """One line per estimate basis shown: what it is and how well it has predicted so far (held-back merges)."""
    seen: dict[str, dict[str, Any]] = {}
    for t in tasks:
        pred = t.get("predicted_retention")
        if pred:
            seen.setdefault(pred["basis"], pred)
    return [f"predicted retention ({basis}; 90% interval): expected accuracy kept vs the own adapter; on held-back "
            f"merges it ranked outcomes at Spearman {p['spearman_heldout']:.2f}, mean error {p['mae_heldout']:.2f} "
            f"(measured on {p['measured_on']})" for basis, p in seen.items()]


def _f(value: float | None, width: int) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'n/a':>{width}}"

