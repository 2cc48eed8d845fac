"""Ground truth for the retention estimate: many merges of a sample set, each task measured, and the fit.

For every merge (6 pairs, 4 triples, 2 fives and all ten adapters; linear, TIES, isolation with entry and row cores,
TSV; equal and unequal weights) and every task in it:
- measured: exact-match accuracy of the merged update on the task's eval rows and the teacher-forced answer NLL,
  next to the task's own adapter and the base; retention = merged / own (exact match) and the share of the own
  adapter's NLL gain the merge keeps, (NLL_base - NLL_merged) / (NLL_base - NLL_own);
- predicted signals: data-free (weights), data-light on inputs (each module's inputs on 16 unlabeled TRAIN prompts
  of the task, never the eval rows) and data-light on outputs (`analysis.forecast.agreement`: the share of those
  prompts on which the merge greedily writes what the task's own adapter writes).
Merges are exact (no export truncation): the estimate describes the merge, the export fidelity is its own number.

Everything goes to bench/results_retention_truth.json (written every 5 merges; `--reuse` resumes a run cut
short); `bench/retention_fit.py` fits the calibration from it in seconds. Prints the summary as JSON.

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
from analysis.forecast import agreement_hits, outputs_value, own_answers  # noqa: E402
from analysis.predict import capture_inputs, task_signals  # noqa: E402
from analysis.reach import Reach  # noqa: E402

METHODS = {  # name -> (registered method, parameters)
    "linear": ("linear", {}),
    "ties": ("ties", {}),
    "isolation_entries": ("isolation", {"granularity": "entries", "p": 0.01}),
    "isolation_rows": ("isolation", {"granularity": "rows", "p": 0.1}),
    "tsv": ("tsv", {}),
}
MEASURE_VERSION = "analysis.evaluation 1"  # the measuring route: a resumed run reuses only rows measured the same way
CONFLICTS = [("format_date", "format_date_us"), ("text_first_word", "text_last_word")]


def merge_specs(names: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """The merges: 6 pairs (the two conflicting ones first), 4 triples, 2 fives and all ten, every method on each
    (65 merges); plus unequal weights (linear, 0.75/0.25) on 4 pairs: 69 merges, 228 task trials, in an order
    where every size is spread over the run, so a run cut short is still a spread of sizes and methods."""
    rng = random.Random(seed)
    pairs = [list(p) for p in CONFLICTS if set(p) <= set(names)]
    others = [list(p) for p in combinations(names, 2) if list(p) not in pairs]
    pairs += rng.sample(others, 6 - len(pairs))
    triples = [sorted(rng.sample(names, 3)) for _ in range(4)]
    fives = [sorted(rng.sample(names, 5)) for _ in range(2)]
    by_size = [[{"members": s, "method": label, "weights": None} for s in group for label in METHODS]
               for group in (pairs, triples, fives, [list(names)])]
    by_size[0] += [{"members": s, "method": "linear", "weights": [0.75, 0.25]} for s in pairs[:4]]
    # each size's merges spread evenly over the run (item j of n at (j + 0.5) / n): a prefix holds every size
    keyed = [((j + 0.5) / len(group), k, spec) for k, group in enumerate(by_size) for j, spec in enumerate(group)]
    return [spec for _, _, spec in sorted(keyed, key=lambda t: (t[0], t[1]))]


def spec_id(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", default=str(REPO / "sample_adapters"))
    ap.add_argument("--data", default=str(REPO / "sample_adapters" / "tasks"))
    ap.add_argument("--em-rows", type=int, default=32)
    ap.add_argument("--nll-rows", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=16, help="unlabeled train prompts per task (data-light)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results_retention_truth.json"))
    ap.add_argument("--reuse", action="store_true", help="keep trials already in --out (resume)")
    ap.add_argument("--prior", default=None, metavar="JSON", help="with --reuse: resume from this file, not --out")
    ap.add_argument("--max-merges", type=int, default=None, help="stop after this many merges (a smoke run)")
    ap.add_argument("--shard", default="0/1", metavar="K/N",
                    help="measure only merges k with k %% N == K (run N processes side by side, then --merge)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="add the merges of these results files (same protocol) to --out and exit")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_files(args.out, args.merge)
    shard, shards = (int(x) for x in args.shard.split("/"))
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
    prompts = {t: measurer.prompts(t, args.prompts) for t in names}
    answers = {t: own_answers(measurer.model, measurer.tokenizer, adapters[t].modules, prompts[t]) for t in names}

    def hits(deltas: Any, task: str) -> list[bool]:
        return agreement_hits(measurer.model, measurer.tokenizer, deltas, prompts[task], answers[task])

    own_hits = {t: hits(adapters[t].modules, t) for t in names}

    def outputs(deltas: Any, task: str) -> dict[str, Any]:
        """The faces' data-light estimate (`analysis.forecast.Forecast`): agreement given the own adapter's."""
        got = hits(deltas, task)
        return {"output_estimate": outputs_value(own_hits[task], got), "output_agreement": sum(got) / len(got),
                "own_agreement": sum(own_hits[task]) / len(got)}
    reach = Reach(measurer.loaded)

    def reached(members: list[Any], merged: Any, weights: Any) -> list[dict[str, float] | None]:
        """The data-free reach signal per member (`analysis.reach`), as the faces compute it."""
        return [s.record() if s is not None else None for s in reach.signals(members, merged, weights=weights)]
    prior_path = Path(args.prior or args.out)
    prior = json.loads(prior_path.read_text()) if args.reuse and prior_path.is_file() else {}
    same = prior.get("protocol", {}).get("measure") == MEASURE_VERSION and (
        prior["protocol"].get("em_rows"), prior["protocol"].get("nll_rows")) == (args.em_rows, args.nll_rows)
    own = prior["own"] if same else {t: measurer.measure(adapters[t].modules, t) for t in names}
    base = prior["base"] if same else {t: measurer.measure({}, t) for t in names}
    done = {tr["id"]: tr for tr in prior.get("merges", [])} if same else {}
    merges = []
    specs = merge_specs(names)[:args.max_merges]
    for k, spec in enumerate(specs):
        if k % shards != shard:
            continue
        sid = spec_id(spec)
        if sid in done and all("output_estimate" in t and "reach" in t for t in done[sid]["tasks"]):
            merges.append(done[sid])
            continue
        members = [adapters[n] for n in spec["members"]]
        method, params = METHODS[spec["method"]]
        tm = time.perf_counter()
        merged = merge_adapters(members, method, weights=spec["weights"], params=params).modules
        if sid in done:  # measured before the output agreement or the reach were part of the run: add only those
            sig = reached(members, merged, spec["weights"])
            merges.append({**done[sid], "tasks": [
                {**t, **({} if "output_estimate" in t else outputs(merged, t["task"])), "reach": sig[i]}
                for i, t in enumerate(done[sid]["tasks"])]})
            print(f"[{k + 1}/{len(specs)}] backfilled {sid}", file=sys.stderr, flush=True)
            continue
        sig = reached(members, merged, spec["weights"])
        free = task_signals(members, merged)
        light = task_signals(members, merged, activations=[acts[n] for n in spec["members"]])
        tasks = []
        for i, n in enumerate(spec["members"]):
            m = measurer.measure(merged, n)
            tasks.append({"task": n, "accuracy": m["accuracy"], "nll": m["nll"],
                          "retention_em": m["accuracy"] / own[n]["accuracy"] if own[n]["accuracy"] > 0 else None,
                          "retention_nll": (base[n]["nll"] - m["nll"]) / (base[n]["nll"] - own[n]["nll"]),
                          "data_free": free[i].__dict__, "data_light": light[i].__dict__, "reach": sig[i],
                          **outputs(merged, n)})
        merges.append({"id": sid, **spec, "seconds": round(time.perf_counter() - tm, 1), "tasks": tasks})
        print(f"[{k + 1}/{len(specs)}] {spec['method']} {'+'.join(spec['members'])}: "
              + ", ".join(f"{t['task']} {t['accuracy']:.2f}" for t in tasks), file=sys.stderr, flush=True)
        if (k + 1) % 5 == 0:
            _write(args.out, names, own, base, merges, args, time.perf_counter() - t0,
                   f"{root.name} ({len(names)} adapters), {measurer.identity}")
    summary = _write(args.out, names, own, base, merges, args, time.perf_counter() - t0,
                     f"{root.name} ({len(names)} adapters), {measurer.identity}")
    print(json.dumps(summary, indent=1))
    return 0


def merge_files(out: str, others: list[str]) -> int:
    """Merges of `others` (shards of one protocol) added to `out`, in the specs' order; the protocol must match. A
    merge `out` already holds is replaced by the shard's row (a resumed run backfills signals into measured rows)."""
    stored = json.loads(Path(out).read_text()) if Path(out).is_file() else None
    for other in others:
        data = json.loads(Path(other).read_text())
        if stored is None:
            stored = data
            continue
        if {k: v for k, v in data["protocol"].items()} != stored["protocol"]:
            raise SystemExit(f"{other}: another protocol than {out}")
        theirs = {m["id"]: m for m in data["merges"]}
        new = [m for m in data["merges"] if m["id"] not in {x["id"] for x in stored["merges"]}]
        stored["merges"] = [theirs.get(m["id"], m) for m in stored["merges"]] + new  # a shard's rows are newer
        if new:  # a backfill of merges already measured adds no measuring time
            stored["summary"]["seconds"] = round(stored["summary"]["seconds"] + data["summary"]["seconds"], 1)
    assert stored is not None
    order = {spec_id(s): k for k, s in enumerate(merge_specs(stored["adapters"]))}
    stored["merges"].sort(key=lambda m: order.get(m["id"], len(order)))
    stored["summary"].update({"merges": len(stored["merges"]),
                              "task_trials": sum(len(m["tasks"]) for m in stored["merges"])})
    Path(out).write_text(json.dumps(stored, indent=1) + "\n")
    print(json.dumps(stored["summary"], indent=1))
    return 0


def _rel(path: str) -> str:
    """Repo-relative where possible: the results file names what it measured without this machine's paths."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _write(path: str, names, own, base, merges, args, seconds: float, measured_on: str) -> dict[str, Any]:
    summary = {"merges": len(merges), "task_trials": sum(len(m["tasks"]) for m in merges),
               "seconds": round(seconds, 1), "measured_on": measured_on}
    data = {"summary": summary, "adapters": names, "own": own, "base": base,
            "protocol": {"measure": MEASURE_VERSION, "em_rows": args.em_rows, "nll_rows": args.nll_rows, "prompts": args.prompts, "output_prompts": args.prompts,
                         "adapters": _rel(args.adapters), "data": _rel(args.data)},
            "merges": merges}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
