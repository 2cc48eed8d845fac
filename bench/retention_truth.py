"""Ground truth for the retention estimate: many merges of a sample set, each task measured, and the fit.

For every merge (6 pairs, 4 triples, 2 fives and all ten adapters; linear, TIES, isolation with entry and row cores,
TSV; equal and unequal weights) and every task in it:
- measured: exact-match accuracy of the merged update on the task's eval rows and the teacher-forced answer NLL,
  next to the task's own adapter and the base; retention = merged / own (exact match) and the share of the own
  adapter's NLL gain the merge keeps, (NLL_base - NLL_merged) / (NLL_base - NLL_own);
- predicted signals: data-free (weights) and data-light (each module's inputs on 16 unlabeled TRAIN prompts of the
  task, never the eval rows).
Merges are exact (no export truncation): the estimate describes the merge, the export fidelity is its own number.

Then `analysis.predict.calibrate` fits the map from signal to exact-match retention on two thirds of the MERGES
(all tasks of a merge on one side) and reports rank correlation and mean absolute error on the other third, for
each basis; the fit is written to analysis/data/retention_calibration.json (what the tool ships) and everything
to bench/results_retention_truth.json. Prints the summary as JSON.

    python bench/retention_truth.py [--adapters DIR] [--data DIR] [--em-rows 32] [--reuse]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.predict import CALIBRATION, Signal, calibrate, capture_inputs, spearman, task_signals  # noqa: E402

METHODS = {  # name -> (registered method, parameters)
    "linear": ("linear", {}),
    "ties": ("ties", {}),
    "isolation_entries": ("isolation", {"granularity": "entries", "p": 0.01}),
    "isolation_rows": ("isolation", {"granularity": "rows", "p": 0.1}),
    "tsv": ("tsv", {}),
}
CONFLICTS = [("format_date", "format_date_us"), ("text_first_word", "text_last_word")]


def merge_specs(names: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """The merges: 6 pairs (the two conflicting ones first), 4 triples, 2 fives and all ten, every method on each
    (65 merges); plus unequal weights (linear, 0.75/0.25) on 4 pairs: 69 merges, 228 task trials."""
    rng = random.Random(seed)
    pairs = [list(p) for p in CONFLICTS if set(p) <= set(names)]
    others = [list(p) for p in combinations(names, 2) if list(p) not in pairs]
    pairs += rng.sample(others, 6 - len(pairs))
    subsets = pairs + [sorted(rng.sample(names, 3)) for _ in range(4)] + [sorted(rng.sample(names, 5))
                                                                           for _ in range(2)] + [list(names)]
    specs = [{"members": s, "method": label, "weights": None} for s in subsets for label in METHODS]
    specs += [{"members": s, "method": "linear", "weights": [0.75, 0.25]} for s in pairs[:4]]
    return specs


def spec_id(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", default=str(REPO / "sample_adapters"))
    ap.add_argument("--data", default=str(REPO / "sample_adapters" / "tasks"))
    ap.add_argument("--em-rows", type=int, default=32)
    ap.add_argument("--nll-rows", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16, help="unlabeled train prompts per task (data-light)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results_retention_truth.json"))
    ap.add_argument("--reuse", action="store_true", help="keep trials already in --out (resume)")
    ap.add_argument("--max-merges", type=int, default=None, help="stop after this many merges (a smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from retention_measure import Measurer  # beside this file

    from analysis.merge import merge_adapters

    root = Path(args.adapters)
    dirs = sorted(p.parent for p in root.glob("*/adapter_config.json"))
    adapters = {d.name: load_adapter(d, name=d.name) for d in dirs}
    names = sorted(adapters)
    measurer = Measurer(args.data, em_rows=args.em_rows, nll_rows=args.nll_rows)
    t0 = time.perf_counter()
    modules = sorted(set().union(*(a.modules for a in adapters.values())))
    acts = {t: capture_inputs(measurer.model, measurer.tokenizer, modules, measurer.prompts(t, args.prompts))
            for t in names}
    own = {t: measurer.measure(adapters[t].modules, t) for t in names}
    base = {t: measurer.measure({}, t) for t in names}
    prior = json.loads(Path(args.out).read_text()) if args.reuse and Path(args.out).is_file() else {}
    done = {tr["id"]: tr for tr in prior.get("merges", [])}
    merges = []
    specs = merge_specs(names)[:args.max_merges]
    for k, spec in enumerate(specs):
        sid = spec_id(spec)
        if sid in done:
            merges.append(done[sid])
            continue
        members = [adapters[n] for n in spec["members"]]
        method, params = METHODS[spec["method"]]
        tm = time.perf_counter()
        merged = merge_adapters(members, method, weights=spec["weights"], params=params).modules
        free = task_signals(members, merged)
        light = task_signals(members, merged, activations=[acts[n] for n in spec["members"]])
        tasks = []
        for i, n in enumerate(spec["members"]):
            m = measurer.measure(merged, n)
            tasks.append({"task": n, "accuracy": m["accuracy"], "nll": m["nll"],
                          "retention_em": m["accuracy"] / own[n]["accuracy"] if own[n]["accuracy"] > 0 else None,
                          "retention_nll": (base[n]["nll"] - m["nll"]) / (base[n]["nll"] - own[n]["nll"]),
                          "data_free": free[i].__dict__, "data_light": light[i].__dict__})
        merges.append({"id": sid, **spec, "seconds": round(time.perf_counter() - tm, 1), "tasks": tasks})
        print(f"[{k + 1}/{len(specs)}] {spec['method']} {'+'.join(spec['members'])}: "
              + ", ".join(f"{t['task']} {t['accuracy']:.2f}" for t in tasks), file=sys.stderr, flush=True)
        if (k + 1) % 5 == 0:
            _write(args.out, names, own, base, merges, args, time.perf_counter() - t0, {})
    cals = fit(merges, f"{root.name} ({len(names)} adapters), {measurer.identity}, EM on {args.em_rows} rows")
    summary = _write(args.out, names, own, base, merges, args, time.perf_counter() - t0, cals)
    if args.max_merges is None:  # a smoke run never replaces the shipped calibration
        CALIBRATION.parent.mkdir(parents=True, exist_ok=True)
        CALIBRATION.write_text(json.dumps({"source": "bench/retention_truth.py", "calibrations": cals}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def fit(merges: list[dict[str, Any]], measured_on: str) -> dict[str, Any]:
    """Calibrate each basis on 2/3 of the merges, report on the held-back third (split by merge id)."""
    rows = [(m, t) for m in merges for t in m["tasks"] if t["retention_em"] is not None]
    held = [int(m["id"], 16) % 3 == 0 for m, _ in rows]
    out = {}
    for basis, key in (("data-free", "data_free"), ("data-light", "data_light")):
        sig = [Signal(**t[key]) for _, t in rows]
        cal = calibrate(sig, [t["retention_em"] for _, t in rows], held, basis=basis, measured_on=measured_on)
        rec = cal.record()
        hold_nll = [t["retention_nll"] for (_, t), h in zip(rows, held) if h]
        pred = [cal.predict(s)[0] for s, h in zip(sig, held) if h]
        rec["spearman_heldout_vs_nll_retention"] = spearman(pred, hold_nll)
        out[basis] = rec
    # the old estimate, for the record: max(0, 1 - interference) is not stored per trial; the scale alone is
    return out


def _write(path: str, names, own, base, merges, args, seconds: float, cals: dict) -> dict[str, Any]:
    summary = {"merges": len(merges), "task_trials": sum(len(m["tasks"]) for m in merges),
               "seconds": round(seconds, 1), "calibration": cals}
    data = {"summary": summary, "adapters": names, "own": own, "base": base,
            "protocol": {"em_rows": args.em_rows, "nll_rows": args.nll_rows, "prompts": args.prompts,
                         "adapters": str(args.adapters), "data": str(args.data)},
            "merges": merges}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
