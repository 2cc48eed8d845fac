"""Isolation against multitask training on the sample set: paired arms at an equal budget, with intervals.

Every arm of `analysis.consolidate` named in --arms trains for the same steps, batch size, schedule shape and,
per seed, the same batch sequence (the record's `batch_digest` shows it) from the sample adapters
(LoRA r=8 on SmolLM2-135M), over --seeds seeds. Measured per (arm, seed, task):
- primary: teacher-forced answer NLL per token (`analysis.evaluation`, the training loss's encoding) on the
  first --rows eval rows of every task (all 64 by default), at the end and at the --curve step counts
  (learning curves on the first --curve-rows rows, measured on the model with the update installed, ending
  at the last step on those same rows);
- secondary: exact-match accuracy (the `analysis.evaluation` protocol) on the first --em-rows eval rows,
  divided by the task's own adapter's accuracy on the same rows (retention).
The full fine-tuning arms are measured as trained (the delta export is exact) and, for NLL, also through
their rank --export-rank LoRA (fidelity stored). Contrasts are paired differences A - B over tasks x seeds
with 95% two-level bootstrap intervals (`analysis.consolidate.stats`). Results are written after every run
and a rerun with the same settings resumes: bench/results_consolidate.json.

    make consolidate                                     # the full protocol (see FULL below)
    .venv/bin/python bench/consolidate_table.py --tasks format_date math_add text_uppercase --seeds 2 \\
        --steps 10 --curve 5 --curve-rows 16 --em-rows 16 --label reduced   # the pipeline end to end
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis.adapters import load_adapter  # noqa: E402
from analysis.consolidate import ARMS, ConsolidateConfig, consolidate  # noqa: E402
from analysis.consolidate.stats import paired_contrast  # noqa: E402
from analysis.evaluation import Evaluator, load_data, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results_consolidate.json"
DATA = ROOT / "sample_adapters" / "tasks"
ARM_ORDER = ["multitask", "merge-then-tune", "isolation", "isolation-random", "sequential", "sequential-isolation",
             "full-multitask", "full-merge-then-tune", "full-isolation"]
# (name, A, B, what it asks): A - B, paired by task and seed
CONTRASTS = [
    ("freezing vs not (LoRA)", "isolation", "merge-then-tune", "does freezing the cores help, same start?"),
    ("true vs random cores", "isolation", "isolation-random", "is it the choice of cores or just freezing?"),
    ("start vs fresh", "merge-then-tune", "multitask", "does starting from the merge help, same parameters?"),
    ("isolation vs multitask", "isolation", "multitask", "the paper's main comparison, at LoRA scale"),
    ("sequential with vs without isolation", "sequential-isolation", "sequential", "the scheduling claim"),
    ("freezing vs not (full fine-tuning)", "full-isolation", "full-merge-then-tune", "the paper's setting"),
    ("full isolation vs full multitask", "full-isolation", "full-multitask", "the paper's main claim, full FT"),
]
# The full protocol, chosen from step times measured on this machine: a LoRA step of 8 sequences ~2.5 s and a full
# fine-tuning step ~4.5 s on one thread, NLL of 640 eval rows ~80 s, exact match of 160 rows ~40 s. 6 LoRA arms x 3
# seeds and 3 full fine-tuning arms x 3 seeds, run as two one-thread processes side by side (LoRA arms | results.json
# rebuild then the full arms; `--arms`, `--out`, then `--merge`), is about one hour on the 2 cores. 60 steps or 32
# exact-match rows would not fit it. 40 steps leave a fresh LoRA short of trained (the curve shows how far), so the
# start-vs-fresh contrast measures learning speed; the freezing contrasts compare arms with the same start and budget.
FULL = {"steps": 40, "seeds": 3, "curve": [10, 20], "curve_rows": 16, "rows": 64, "em_rows": 16}

log = logging.getLogger("consolidate_table")


def settings_of(args: argparse.Namespace, tasks: list[str]) -> dict[str, Any]:
    return {"tasks": tasks, "steps": args.steps, "seeds": list(range(args.seeds)), "curve": args.curve,
            "curve_rows": args.curve_rows, "rows": args.rows, "em_rows": args.em_rows, "rank": args.rank,
            "batch_size": 8, "lr": args.lr, "full_lr": args.full_lr, "warmup": 5, "p": 0.01, "stages": 3,
            "export_rank": args.export_rank, "schedule": "linear warm-up 5 steps, cosine to 10% (per stage)",
            "threads": args.threads}


def references(adapters: list, nll: Evaluator, em: Evaluator | None) -> dict:
    """Base and own-adapter NLL per task (and own exact match): what the arms are read against."""
    tasks = [a.name for a in adapters]
    out = {"base_nll": nll.nll({}, tasks),
           "own_nll": {a.name: nll.nll(a.modules, [a.name])[a.name] for a in adapters}}
    if em is not None:
        out["own_accuracy"] = {a.name: em.accuracy(a.modules, [a.name])[a.name] for a in adapters}
    return out


def run_arm(model: Any, tokenizer: Any, adapters: list, arm: str, seed: int, args: argparse.Namespace,
            nll: Evaluator, curve_nll: Evaluator, em: Evaluator | None, own: dict[str, float] | None) -> dict:
    cfg = ConsolidateConfig(strategy=arm, steps=args.steps, rank=args.rank, lr=args.lr, full_lr=args.full_lr,
                            seed=seed, export_rank=args.export_rank)
    t0 = time.time()

    tasks = [a.name for a in adapters]

    def checkpoint(step: int, m: Any) -> dict[str, float]:
        return curve_nll.nll({}, tasks)  # the model as it is now: the trained update installed

    # the curve ends at the last step too, on the same (first --curve-rows) rows as its other points
    res = consolidate(model, tokenizer, adapters, str(DATA), cfg, checkpoints=(*args.curve, args.steps),
                      on_checkpoint=checkpoint)
    rec = res.record
    t1 = time.time()
    run: dict[str, Any] = {"nll": nll.nll(res.modules, tasks)}
    if res.lora is not None:
        run["nll_lora_export"] = nll.nll(res.lora, tasks)
    run["seconds_nll"] = round(time.time() - t1, 1)
    if em is not None:
        t2 = time.time()
        acc = em.accuracy(res.modules, tasks)
        run["accuracy"] = acc
        run["retention"] = {t: acc[t] / own[t] if own and own.get(t) else None for t in acc}
        run["seconds_em"] = round(time.time() - t2, 1)
    for k in ("trainable_parameters", "free_parameters", "free_parameters_last_stage", "frozen_positions",
              "frozen_core_max_change", "export_rank", "lora_export", "batch_digest", "curve", "loss", "stages",
              "seconds"):
        run[k] = rec.get(k)
    run["seconds"]["total"] = round(time.time() - t0, 1)
    return run


def cell_array(runs: dict, arm: str, metric: str, tasks: list[str], seeds: list[str]) -> np.ndarray | None:
    out = np.full((len(tasks), len(seeds)), np.nan)
    for j, s in enumerate(seeds):
        run = runs.get(arm, {}).get(s)
        if run is None or not run.get(metric):
            return None
        for i, t in enumerate(tasks):
            v = run[metric].get(t)
            out[i, j] = np.nan if v is None else v
    return out if np.isfinite(out).all() else None


def contrasts(result: dict) -> list[dict[str, Any]]:
    """Every contrast of two stored arms, per metric and curve step, over the seeds both arms have run (a run
    that stopped early still gives paired contrasts; `seeds` says which)."""
    tasks, runs = result["settings"]["tasks"], result["runs"]
    out = []
    for name, a, b, question in CONTRASTS:
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})), key=int)
        entry: dict[str, Any] = {"name": name, "a": a, "b": b, "question": question, "seeds": [int(x) for x in seeds]}
        for metric in ("nll", "retention", "accuracy"):
            xa, xb = cell_array(runs, a, metric, tasks, seeds), cell_array(runs, b, metric, tasks, seeds)
            if seeds and xa is not None and xb is not None:
                entry[metric] = paired_contrast(xa, xb).as_dict()
        curve = {}
        for step in [*result["settings"]["curve"], result["settings"]["steps"]]:
            pick = {arm: {s: {"c": r["curve"].get(str(step), {})} for s, r in runs.get(arm, {}).items()}
                    for arm in (a, b)}
            xa, xb = cell_array(pick, a, "c", tasks, seeds), cell_array(pick, b, "c", tasks, seeds)
            if seeds and xa is not None and xb is not None:
                curve[str(step)] = paired_contrast(xa, xb).as_dict()
        if curve:
            entry["nll_curve"] = curve
        if "nll" in entry:
            out.append(entry)
    return out


def markdown(result: dict) -> str:
    """The stored contrasts and arm means as README tables."""
    s = result["settings"]
    lines = [f"{result.get('label', '?')}: {len(s['tasks'])} tasks, seeds {s['seeds']}, {s['steps']} steps, NLL on "
             f"{s['rows']} eval rows per task, exact match on {s['em_rows']}.", "",
             "| contrast: A - B | NLL diff [95% CI] (< 0: A better) | on the curve (step: diff [CI]) | "
             "retention diff [95% CI] (> 0: A better) |", "|---|---|---|---|"]

    def cell(x: dict | None) -> str:
        return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]" if x else "-"

    for c in result.get("contrasts", []):
        curve = "; ".join(f"{k}: {cell(v)}" for k, v in (c.get("nll_curve") or {}).items()) or "-"
        seeds = f" (seeds {', '.join(map(str, c['seeds']))})" if "seeds" in c else ""
        lines.append(f"| {c['name']}: {c['a']} - {c['b']}{seeds} | {cell(c.get('nll'))} | {curve} | "
                     f"{cell(c.get('retention'))} |")
    lines += ["", "| arm | trainable | free | frozen | mean NLL | mean retention | train s / run |",
              "|---|---|---|---|---|---|---|"]
    for arm, per in result["runs"].items():
        r = list(per.values())
        nll = np.mean([np.mean(list(x["nll"].values())) for x in r])
        ret = [np.mean([v for v in x["retention"].values() if v is not None]) for x in r if x.get("retention")]
        lines.append(f"| {arm} | {r[0]['trainable_parameters']:,} | {r[0]['free_parameters']:,} | "
                     f"{r[0]['frozen_positions']:,} | {nll:.3f} | {np.mean(ret) if ret else float('nan'):.3f} | "
                     f"{np.mean([x['seconds']['train'] for x in r]):.0f} |")
    ref = result.get("references", {})
    if ref:
        lines.append(f"| (base model) | | | | {np.mean(list(ref['base_nll'].values())):.3f} | | |")
        lines.append(f"| (each task's own adapter) | | | | {np.mean(list(ref['own_nll'].values())):.3f} | 1 | |")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=None, help="task subset (default: all ten)")
    ap.add_argument("--arms", nargs="*", default=ARM_ORDER, choices=list(ARMS))
    ap.add_argument("--seeds", type=int, default=FULL["seeds"])
    ap.add_argument("--seed-from", type=int, default=0,
                    help="run only seeds seed-from..seeds-1 (a second process on a copy of --out; merge with --merge)")
    ap.add_argument("--steps", type=int, default=FULL["steps"])
    ap.add_argument("--curve", type=int, nargs="*", default=FULL["curve"], help="step counts of the learning curve")
    ap.add_argument("--curve-rows", type=int, default=FULL["curve_rows"], help="eval rows per task on the curve")
    ap.add_argument("--rows", type=int, default=FULL["rows"], help="eval rows per task for the final NLL")
    ap.add_argument("--em-rows", type=int, default=FULL["em_rows"], help="eval rows per task for exact match (0: none)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--export-rank", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default=None, help="how the run is labelled in the results (default: full/reduced)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--markdown", action="store_true", help="print the stored results as Markdown and exit")
    ap.add_argument("--merge", default=None, metavar="JSON", help="add the runs of JSON (same settings) to --out and exit")
    ap.add_argument("--recompute", action="store_true",
                    help="recompute the contrasts of the stored results (e.g. after a run stopped early) and exit")
    args = ap.parse_args()
    bad = [n for n in ("seeds", "steps", "curve_rows", "rows", "rank", "export_rank", "threads")
           if getattr(args, n) < 1] + (["em_rows"] if args.em_rows < 0 else [])
    if not 0 <= args.seed_from < args.seeds:
        bad.append("seed_from")
    if bad or any(not (0 < c < args.steps) for c in args.curve):
        ap.error(f"out of range: {', '.join(bad) or '--curve (each in 1..steps-1)'}")
    return args


def ap_error(message: str) -> None:
    print(f"consolidate_table: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    args = parse()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if args.merge:  # runs of another results file with the same settings (e.g. seeds run in a second process)
        stored, other = json.loads(Path(args.out).read_text()), json.loads(Path(args.merge).read_text())
        if stored["settings"] != other["settings"]:
            ap_error(f"{args.merge}: other settings than {args.out}")
        for arm, per in other["runs"].items():
            for seed, run in per.items():
                stored["runs"].setdefault(arm, {}).setdefault(seed, run)
        stored["contrasts"] = contrasts(stored)
        Path(args.out).write_text(json.dumps(stored, indent=2, default=float) + "\n")
        return
    if args.recompute:
        stored = json.loads(Path(args.out).read_text())
        stored["contrasts"] = contrasts(stored)
        Path(args.out).write_text(json.dumps(stored, indent=2, default=float) + "\n")
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tasks = args.tasks or sorted(p.name for p in DATA.iterdir() if (ROOT / "sample_adapters" / p.name).is_dir())
    adapters = [load_adapter(ROOT / "sample_adapters" / t, name=t) for t in tasks]
    loaded = load_model()  # the sample base
    model, tokenizer = loaded.model, loaded.tokenizer
    data = load_data([DATA], metric="both").select(tasks)
    nll = Evaluator(loaded, data, limit=args.rows)
    curve_nll = Evaluator(loaded, data, limit=args.curve_rows)
    em = Evaluator(loaded, data, limit=args.em_rows) if args.em_rows else None
    settings = settings_of(args, tasks)
    full = all(settings[k] == v for k, v in FULL.items() if k != "seeds") and args.seeds >= FULL["seeds"] \
        and len(tasks) == 10 and args.arms == ARM_ORDER
    path = Path(args.out)
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if result.get("settings") != settings:
        result = {}
    result.update({"label": args.label or ("full protocol" if full else "REDUCED run (not the full protocol)"),
                   "settings": settings, "model": loaded.identity.as_dict(),
                   "data": [r for r in nll.records()],
                   "machine": f"{platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}, "
                   "shared 2-core CPU",
                   "metrics": {"nll": "teacher-forced answer NLL per token (answer + newline), lower is better",
                               "retention": "exact match / the task's own adapter's exact match, same rows"}})
    if "references" not in result:
        result["references"] = references(adapters, nll, em)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    result.setdefault("runs", {})
    own = result["references"].get("own_accuracy")
    for seed in range(args.seed_from, args.seeds):
        for arm in args.arms:
            if str(seed) in result["runs"].get(arm, {}):
                continue
            run = run_arm(model, tokenizer, adapters, arm, seed, args, nll, curve_nll, em, own)
            result["runs"].setdefault(arm, {})[str(seed)] = run
            result["contrasts"] = contrasts(result)
            log.info("%s seed %d: mean NLL %.3f (%.0f s)", arm, seed, np.mean(list(run["nll"].values())),
                     run["seconds"]["total"])
            path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    result["wall_seconds_this_run"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({c["name"]: c.get("nll") for c in result["contrasts"]}, indent=2))


if __name__ == "__main__":
    main()
