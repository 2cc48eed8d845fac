"""Real accuracy of merged sample adapters: isolation against the baselines, in one run.

Every sample adapter (sample_adapters/<task>/, LoRA on SmolLM2-135M) is merged into ONE adapter per
method configuration; the merge is evaluated on every task's eval split (first `--limit` rows, exact
match under the evaluator's fixed protocol) next to each individual adapter on its own task and the
base model. Retention = merged accuracy / the task's own adapter accuracy. Results are written after
every configuration (a partial run still leaves a readable file).

    OMP_NUM_THREADS=2 .venv/bin/python bench/sample_merge_table.py --limit 32
    OMP_NUM_THREADS=2 .venv/bin/python bench/sample_merge_table.py --limit 16 --sweep   # lambda/p sweep
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.adapters import load_adapter  # noqa: E402
from analysis.evaluation import Evaluator, load_data, load_model, sample_task_names  # noqa: E402
from analysis.merge import merge_adapters  # noqa: E402
from analysis.preview import preview_merge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results_sample_merge.json"

# (label, method, params): the baselines the brief asks for, then the isolation variants tried.
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("isolation", "isolation", {}),
    ("linear_mean", "linear", {}),
    ("task_arithmetic", "task_arithmetic", {}),
    ("ties", "ties", {}),
    ("orthogonal", "orthogonal", {}),
    ("isolation_sum", "isolation", {"blend": "sum"}),
    ("isolation_mean", "isolation", {"blend": "mean"}),
    ("isolation_mean_p05", "isolation", {"blend": "mean", "p": 0.05}),
    ("isolation_mean_p20", "isolation", {"blend": "mean", "p": 0.2}),
    ("isolation_rows_mean_p10", "isolation", {"blend": "mean", "granularity": "rows", "p": 0.1}),
    ("isolation_mean_conflict_mean", "isolation", {"blend": "mean", "conflict": "mean"}),
]
# Scale sweep (--sweep, written to results_sample_merge_sweep.json): the fair comparison at lambda < 1.
# task_arithmetic lambda 0.1 is linear_mean (already in CONFIGS); isolation lambda scales only the non-core
# blend, so sum + lambda is task arithmetic off the cores with the cores transplanted at full strength.
SWEEP: list[tuple[str, str, dict[str, Any]]] = [
    ("task_arithmetic_l01", "task_arithmetic", {"lambda": 0.1}),  # = linear_mean, the reference at this limit
    ("task_arithmetic_l02", "task_arithmetic", {"lambda": 0.2}),
    ("task_arithmetic_l03", "task_arithmetic", {"lambda": 0.3}),
    ("task_arithmetic_l05", "task_arithmetic", {"lambda": 0.5}),
    ("isolation_sum_l02", "isolation", {"blend": "sum", "lambda": 0.2}),
    ("isolation_sum_l03", "isolation", {"blend": "sum", "lambda": 0.3}),
    ("isolation_sum_l05", "isolation", {"blend": "sum", "lambda": 0.5}),
    ("isolation_rows_p10_sum_l03", "isolation", {"blend": "sum", "lambda": 0.3, "granularity": "rows", "p": 0.1}),
    ("isolation_rows_p30_sum_l03", "isolation", {"blend": "sum", "lambda": 0.3, "granularity": "rows", "p": 0.3}),
    ("isolation_rows_p30_mean", "isolation", {"blend": "mean", "granularity": "rows", "p": 0.3}),
    ("isolation_sum_l01", "isolation", {"blend": "sum", "lambda": 0.1}),  # = blend mean, cores at full strength
    ("isolation_p10_sum_l01", "isolation", {"blend": "sum", "lambda": 0.1, "p": 0.1}),
    ("isolation_p30_sum_l01", "isolation", {"blend": "sum", "lambda": 0.1, "p": 0.3}),
    ("isolation_p30_cores_only", "isolation", {"blend": "sum", "lambda": 0.0, "p": 0.3}),
    ("isolation_rows_p30_cores_only", "isolation", {"blend": "sum", "lambda": 0.0, "granularity": "rows", "p": 0.3}),
    ("ties_l05", "ties", {"lambda": 0.5}),
    ("ties_l20", "ties", {"lambda": 2.0}),
]
SWEEP_OUT = ROOT / "bench" / "results_sample_merge_sweep.json"
# Smaller merges ("tasks" in the investigation): dissimilar pairs, a triple, and the most similar pair
# (format_date / format_date_us have the highest core Jaccard of the set).
SUBSETS = ["format_date,text_uppercase", "math_max,text_last_word", "format_snake,text_reverse_words",
           "math_add,text_first_word,format_date_us", "format_date,format_date_us"]

log = logging.getLogger("sample_merge_table")


def accuracy(model: Any, tokenizer: Any, deltas: dict, tasks: list[str], limit: int) -> dict[str, float]:
    """Exact match through `analysis.evaluation` on the sample base (`model`, `tokenizer`: kept for the callers)."""
    return Evaluator(load_model(), load_data(None).select(tasks), limit=limit).accuracy(deltas, tasks)


def summarize(merged: dict[str, float], own: dict[str, float]) -> dict[str, Any]:
    ratios = {t: merged[t] / own[t] for t in own if own[t] > 0}
    return {"mean_accuracy": statistics.fmean(merged.values()),
            "mean_retention": statistics.fmean(ratios.values()) if ratios else None,
            "retention": ratios}


def run_configs(adapters: list, tasks: list[str], model: Any, tokenizer: Any, args: argparse.Namespace,
                own: dict[str, float], path: Path, out: dict, into: dict) -> dict:
    """Merge `adapters` with every configuration, evaluate on `tasks`, store in `into` (saved each time)."""
    for label, method, params in (SWEEP if args.sweep else CONFIGS):
        if args.only and label not in args.only:
            continue
        t = time.perf_counter()
        res = merge_adapters(adapters, method, params=params)
        merge_s = time.perf_counter() - t
        acc = accuracy(model, tokenizer, res.modules, tasks, args.limit)
        pv = preview_merge(adapters, res.modules)
        into[label] = {
            "method": method, "parameters": res.params, "weights": res.weights, "merge_seconds": round(merge_s, 2),
            "accuracy": acc, **summarize(acc, {t: own[t] for t in tasks}),
            "preview": {n: dict(s) for n, s in pv["per_task"].items()},
            "method_info": {k: v for k, v in res.info.items() if k != "conflicts_per_module"},
        }
        log.info("%s on %s: mean acc %.3f, mean retention %s (%.0f s)", label, ",".join(tasks),
                 into[label]["mean_accuracy"], into[label]["mean_retention"], time.perf_counter() - t)
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=32, help="eval rows per task (first N of the eval split)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="configuration labels to run (default: all); others stored at the same limit are kept")
    ap.add_argument("--out", default=None, help=f"default {OUT.name}, or {SWEEP_OUT.name} with --sweep")
    ap.add_argument("--sweep", action="store_true", help="run the scale-sweep configurations (SWEEP) instead")
    ap.add_argument("--subsets", nargs="*", default=None,
                    help="also merge these task subsets (comma-separated names; no value = the built-in list)")
    ap.add_argument("--skip-full", action="store_true", help="skip the all-task merge (keep its stored results)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    tasks = [t for t in sample_task_names() if (ROOT / "sample_adapters" / t / "adapter_model.safetensors").is_file()]
    adapters = [load_adapter(ROOT / "sample_adapters" / t, name=t) for t in tasks]
    model, tokenizer = load_model().model, load_model().tokenizer
    out: dict[str, Any] = {"limit": args.limit, "tasks": tasks, "protocol": "analysis.evaluation (exact match, "
                           "greedy, first line), first `limit` eval rows per task", "configs": {}}
    t0 = time.perf_counter()
    out["base"] = accuracy(model, tokenizer, {}, tasks, args.limit)
    out["individual_own"] = {a.name: accuracy(model, tokenizer, a.modules, [a.name], args.limit)[a.name]
                             for a in adapters}
    log.info("base and individual done in %.0f s", time.perf_counter() - t0)
    path = Path(args.out or (SWEEP_OUT if args.sweep else OUT))
    if args.only and path.is_file() and json.loads(path.read_text()).get("limit") == args.limit:
        out["configs"] = json.loads(path.read_text()).get("configs", {})  # --only adds to the stored configs
    if args.skip_full and path.is_file():
        kept = json.loads(path.read_text())
        out["configs"] = kept.get("configs", {})
    else:
        out["configs"] = run_configs(adapters, tasks, model, tokenizer, args, out["individual_own"], path, out,
                                     out["configs"])
    if args.subsets is not None:
        out["subsets"] = {}
        for subset in args.subsets or SUBSETS:
            names = subset.split(",")
            chosen = [a for a in adapters if a.name in names]
            out["subsets"][subset] = {}
            run_configs(chosen, names, model, tokenizer, args, out["individual_own"], path, out,
                        out["subsets"][subset])
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    brief = {k: round(v["mean_retention"] or 0.0, 3) for k, v in out["configs"].items()}
    for subset, configs in out.get("subsets", {}).items():
        brief[subset] = {k: round(v["mean_retention"] or 0.0, 3) for k, v in configs.items()}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
