"""`adapter-atlas merge`: merge adapters with a registered method and export what PEFT (or kohya) loads.

    adapter-atlas merge A B C --method isolation --param p=0.02 --param granularity=rows --out merged/
    adapter-atlas merge --recipe merged/recipe.yaml --out again/      # replay; refuses changed inputs
    adapter-atlas merge --list-methods                                  # methods and declared parameters

Progress goes to stderr (tqdm), a JSON summary to stdout. The `--param` keys, their types and ranges
come from each method's declaration in `analysis.merge.registry`, like the recipe schema and the app.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from analysis.errors import RecipeError
from analysis.export import build_recipe, export_merge, load_recipe, load_recipe_inputs, recipe_sha256
from analysis.export.recipe import EXPORT_FORMATS, Recipe
from analysis.merge import describe_methods, merge_adapters
from analysis.merge.registry import parse_param_strings
from analysis.preview import preview_merge


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge", help="merge adapters (isolation, ties, svd, ...) and export PEFT/kohya/delta",
        description="Merge adapters module by module on dW and export the result with its recipe.",
        epilog="Dense results (ties, dare_*, magnitude_prune, entry isolation) need --rank for peft/kohya.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="adapter directories or files")
    p.add_argument("--method", default=None, help="merge method (see --list-methods)")
    p.add_argument("--weights", default=None, metavar="W1,W2,...", help="one weight per adapter")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--rank", type=int, default=None, help="re-factor every module to this rank for export")
    p.add_argument("--format", default="peft", choices=EXPORT_FORMATS, help="export format (default peft)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (refused if it exists)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--allow-different-bases", action="store_true",
                   help="merge adapters recorded for different base models anyway")
    p.add_argument("--recipe", default=None, metavar="FILE", help="replay a recipe.yaml instead of PATH/--method")
    p.add_argument("--no-preview", action="store_true", help="skip the data-free preview (preview.json)")
    p.add_argument("--json", action="store_true", help="print the summary (with the preview per task) as JSON")
    p.add_argument("--list-methods", action="store_true", help="print the methods and their parameters")
    p.set_defaults(func=run)


def _bar(desc: str) -> tuple[Any, Any]:
    bar = tqdm(total=0, desc=desc, unit="module", file=sys.stderr, leave=False, disable=None)

    def progress(done: int, total: int, _label: str = "") -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, progress


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise RecipeError(f"--weights '{text}': expected comma-separated numbers") from None


def list_methods() -> int:
    for m in describe_methods():
        exact = {True: "exact low rank", False: "dense: --rank for peft/kohya"}.get(
            m["exact_lowrank"], "low rank or dense depending on parameters")
        print(f"{m['name']}: {m['help']} [{exact}]")
        for p in m["params"]:
            bounds = f" one of {'|'.join(p['choices'])}" if p["choices"] else (
                f" in [{p['low']}, {p['high']}]" if p["low"] is not None else "")
            print(f"    {p['name']} ({p['type']}, default {p['default']!r}{bounds}): {p['help']}")
    return 0


def _recipe_from_args(args: argparse.Namespace) -> tuple[Recipe, list]:
    if args.recipe:
        if args.paths or args.method:
            raise RecipeError("--recipe replays a recipe: do not also give PATH or --method")
        recipe = load_recipe(args.recipe)
        return recipe, load_recipe_inputs(recipe)
    if not args.paths or not args.method:
        raise RecipeError("merge needs PATH... and --method (or --recipe FILE, or --list-methods)")
    from analysis.adapters import load_adapter

    adapters = [load_adapter(Path(p)) for p in tqdm(args.paths, desc="loading", file=sys.stderr, leave=False,
                                                    disable=None)]
    recipe = build_recipe(adapters, args.method, parameters=parse_param_strings(args.param),
                          weights=_weights(args.weights), export_format=args.format, rank=args.rank,
                          force=args.allow_different_bases)
    return recipe, adapters


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        return list_methods()
    if not args.out:
        raise RecipeError("merge needs --out DIR")
    out = Path(args.out)
    if out.exists() and not args.force:  # refuse before any work
        raise RecipeError(f"{out} already exists; pass --force to replace it")
    recipe, adapters = _recipe_from_args(args)
    bar, progress = _bar(f"merge ({recipe.method})")
    result = merge_adapters(adapters, recipe.method, weights=recipe.weights, params=recipe.parameters,
                            force=recipe.force, progress=progress)
    bar.close()
    preview = None
    if not args.no_preview:
        bar, progress = _bar("preview")
        preview = preview_merge(adapters, result.modules, rank=recipe.export.rank, progress=progress)
        if result.info:
            preview["method_info"] = result.info
        bar.close()
    export_merge(result.modules, recipe, out, inputs=adapters, preview=preview, force=args.force)
    summary = {"out": str(out), "method": recipe.method, "parameters": recipe.parameters,
               "weights": result.weights, "format": recipe.export.format, "rank": recipe.export.rank,
               "modules": len(result.modules), "recipe_sha256": recipe_sha256(recipe),
               "preview": preview["per_task"] if preview else None, "method_info": result.info or None}
    print(json.dumps(summary, indent=2, default=float) if args.json else _readable(summary))
    return 0


def _readable(summary: dict[str, Any]) -> str:
    """The summary as a person reads it: where it went, what was merged, the preview per task."""
    params = ", ".join(f"{k}={v}" for k, v in summary["parameters"].items()) or "defaults"
    lines = [f"wrote {summary['out']} ({summary['format']}, {summary['modules']} modules, "
             f"rank {summary['rank'] or 'exact'})",
             f"method: {summary['method']} ({params}); weights {summary['weights']}",
             f"recipe sha256: {summary['recipe_sha256']}"]
    preview = summary.get("preview")
    if preview:
        width = max(len(t) for t in preview)
        lines += ["", f"{'task':<{width}}  core kept  interference  cosine  conflicts"]
        for task, m in preview.items():
            lines.append(f"{task:<{width}}  {m['core_retention']:9.3f}  {m['interference']:12.3f}  "
                         f"{m['cosine']:6.3f}  {m['conflicts']:9d}")
        lines.append("core kept: share of the task's core that survives; interference: "
                     "||(dW_merged - dW_t) V_t|| / ||dW_t V_t|| on the task's own inputs (lower is better)")
    return "\n".join(lines)
