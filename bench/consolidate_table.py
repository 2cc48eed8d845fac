"""Consolidating the ten sample adapters into one: every strategy at the same budget, plus the planner.

One run over sample_adapters/<task> (LoRA r=8 on SmolLM2-135M): each strategy of `analysis.consolidate`
(multitask, sequential, merge-then-tune, isolation with |dW| cores, isolation with saliency cores) trains for
the same steps, batch, schedule and seed, writes its PEFT adapter, and is evaluated ON THAT WRITTEN ADAPTER on
every task's eval split (first `--limit` rows, exact match). Accuracy is normalised by each task's own adapter
(measured here by the same evaluator). Then the planner (`analysis.plan`, --min-retention 0.9, verified by
evaluation) says how many adapters remain. Results are written after every strategy, so a partial run still
leaves data: bench/results_consolidate.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/consolidate_table.py            # = make consolidate
    .venv/bin/python bench/consolidate_table.py --only multitask --steps 10  # a quick look
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from analysis.adapters import load_adapter  # noqa: E402
from analysis.consolidate.run import run_consolidation  # noqa: E402
from analysis.consolidate.train import ConsolidateConfig  # noqa: E402
from analysis.evaluation import Evaluator, load_data, load_model  # noqa: E402
from analysis.plan import Planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results_consolidate.json"
DATA = ROOT / "sample_adapters" / "tasks"
# (label, strategy, cores): the order puts the paper's comparison first so a late finish still has it.
RUNS = [("multitask", "multitask", "magnitude"), ("isolation", "isolation", "magnitude"),
        ("merge-then-tune", "merge-then-tune", "magnitude"), ("sequential", "sequential", "magnitude"),
        ("isolation-saliency", "isolation", "saliency")]
# Budget, measured on this machine before the run (2 cores shared by ~7 jobs, load average 8-12): with ONE torch
# thread a step of 8 sequences takes ~6-8 s and a 10-task evaluation of 32 rows ~2-3 min (with two threads
# the same evaluation was ~30x slower: OpenMP threads spin-wait on an oversubscribed CPU, so this bench runs on
# one thread). 5 runs x (STEPS steps + one evaluation) + own accuracy must fit in ~45-60 min (the planner's 24
# verified merges add ~20 min; the stored plan ran in a second process, --plan-only, alongside the runs): 50 steps x 8 = 400 examples, ~40 per task. The sample adapters had 20-150 steps x 8 on
# ONE task each, so this budget is short for ten tasks; it is the same for every strategy.
STEPS = 50

log = logging.getLogger("consolidate_table")


def summary(rec: dict[str, Any]) -> dict[str, Any]:
    keep = ("accuracy", "retention", "mean_retention", "seconds", "export", "trainable_parameters", "frozen_rows",
            "frozen_core_max_change", "groups", "stages", "export_rank")
    out = {k: rec.get(k) for k in keep}
    out["mean_accuracy"] = statistics.fmean(rec["accuracy"].values()) if rec.get("accuracy") else None
    out["min_retention"] = min(v for v in rec["retention"].values() if v is not None) if rec.get("retention") else None
    loss = rec["loss"]
    out["loss_first10"], out["loss_last10"] = statistics.fmean(loss[:10]), statistics.fmean(loss[-10:])
    out["loss"] = loss
    return out


SHORT = {"text_first_word": "1st", "text_last_word": "last", "text_reverse_words": "rev", "text_uppercase": "UP",
         "math_max": "max", "math_add": "add", "math_count": "cnt", "format_date": "dmy", "format_date_us": "mdy",
         "format_snake": "snk"}


def markdown(out: dict[str, Any]) -> str:
    """The stored results as the README table: retention per task (accuracy / own adapter's), mean, worst."""
    tasks = out["tasks"]
    head = "| strategy | " + " | ".join(SHORT.get(t, t) for t in tasks) + " | mean | worst | train s |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for label, run in out.get("runs", {}).items():
        ret = run["retention"]
        cells = " | ".join(f"{ret[t]:.2f}" for t in tasks)
        lines.append(f"| {label} | {cells} | {run['mean_retention']:.3f} | {run['min_retention']:.2f} | "
                     f"{run['seconds']['train']:.0f} |")
    own = out.get("own_accuracy", {})
    lines.append("| (own adapter accuracy) | " + " | ".join(f"{own.get(t, 0):.2f}" for t in tasks) + " | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=32, help="eval rows per task")
    ap.add_argument("--only", nargs="*", default=None, help="run labels (default all); stored others are kept")
    ap.add_argument("--skip-plan", action="store_true")
    ap.add_argument("--max-trials", type=int, default=24,
                    help="planner: most group merges verified (24: ~20 min under load; 10 stopped at 8 adapters)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see the budget note)")
    ap.add_argument("--work", default="/tmp/adapter_atlas_consolidate", help="where the adapters are written")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--markdown", action="store_true", help="print the stored results as a Markdown table and exit")
    ap.add_argument("--plan-only", default=None, metavar="JSON",
                    help="run only the planner (own accuracy from --out) and write its result to JSON; "
                         "--merge-plan JSON puts it into --out")
    ap.add_argument("--merge-plan", default=None, metavar="JSON", help="store a --plan-only result in --out and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if args.merge_plan:
        stored = json.loads(Path(args.out).read_text())
        stored["plan"] = json.loads(Path(args.merge_plan).read_text())["plan"]
        Path(args.out).write_text(json.dumps(stored, indent=2, default=float) + "\n")
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tasks = sorted(p.name for p in DATA.iterdir() if (ROOT / "sample_adapters" / p.name / "adapter_config.json").is_file())
    adapters = [load_adapter(ROOT / "sample_adapters" / t, name=t) for t in tasks]
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    evaluate = Evaluator(loaded, load_data([DATA]).select(tasks), limit=args.limit)
    path = Path(args.out)
    out: dict[str, Any] = {}
    if path.is_file():
        out = json.loads(path.read_text())
    if out.get("settings", {}).get("steps") != args.steps or out.get("settings", {}).get("limit") != args.limit:
        out = {}
    out.update({"tasks": tasks, "settings": {"steps": args.steps, "rank": args.rank, "batch_size": args.batch_size,
                                             "lr": 3e-3, "warmup": 5, "schedule": "cosine to 10%", "seed": 0,
                                             "p": 0.01, "limit": args.limit, "threads": args.threads},
                "protocol": "analysis.evaluation exact-match protocol (raw prompt, greedy, first line, exact match) on the first "
                            "`limit` eval rows per task, measured on the written PEFT adapter",
                "machine": f"{platform.machine()}, {args.threads} torch threads (shared), torch {torch.__version__}"})
    out.setdefault("runs", {})
    if args.plan_only:  # a second process next to a running table: reads --out, writes only its own file
        t = time.time()
        plan = Planner(0.9, evaluate=evaluate, max_trials=args.max_trials).plan(adapters,
                                                                                own_accuracy=out["own_accuracy"])
        Path(args.plan_only).write_text(json.dumps({"plan": {**plan.as_dict(), "seconds": round(time.time() - t, 1)}},
                                                   indent=2, default=float) + "\n")
        return
    if "own_accuracy" not in out:
        out["own_accuracy"] = {a.name: evaluate(a.modules, [a.name])[a.name] for a in adapters}
        # the base is not re-measured here (3 min on a shared machine): sample_adapters/results.json, 64 rows
        base = json.loads((ROOT / "sample_adapters" / "results.json").read_text())["base_accuracy"]
        out["base_accuracy_64_rows"] = {t: base[t] for t in tasks}
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    own = out["own_accuracy"]
    for label, strategy, cores in RUNS:
        if args.only is not None and label not in args.only:
            continue
        cfg = ConsolidateConfig(strategy=strategy, steps=args.steps, rank=args.rank, batch_size=args.batch_size,
                                cores=cores)
        bar = tqdm(total=args.steps, desc=label, unit="step", file=sys.stderr, mininterval=10)

        def progress(done: int, total: int, loss: float, bar: Any = bar) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        rec = run_consolidation(model, tokenizer, adapters, str(DATA), cfg, Path(args.work) / label,
                                evaluate=evaluate, own_accuracy=own, force=True, progress=progress,
                                base=loaded.identity.as_dict())
        bar.close()
        out["runs"][label] = {"strategy": strategy, "cores": cores, **summary(rec)}
        log.info("%s: mean retention %.3f (%.0f s)", label, rec["mean_retention"], rec["seconds"]["total"])
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    if not args.skip_plan:
        t = time.time()
        plan = Planner(0.9, evaluate=evaluate, max_trials=args.max_trials).plan(adapters, own_accuracy=own)
        out["plan"] = {**plan.as_dict(), "seconds": round(time.time() - t, 1)}
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    out["wall_seconds"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    brief = {k: round(v["mean_retention"], 3) for k, v in out["runs"].items()}
    if "plan" in out:
        brief["plan_adapters_out"] = out["plan"]["adapters_out"]
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
