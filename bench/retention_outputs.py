"""Data-light from outputs: does the merge reproduce the own adapter's greedy answers on unlabeled prompts?

For every merge stored by `bench/retention_truth.py`, merged again (merges are deterministic), and every task in it:
`analysis.predict.agreement` on the task's first 16 TRAIN prompts (no labels: the own adapter's greedy answers
are the reference) in one teacher-forced pass, no generation for the merge. Stored beside the other signals as
`output_agreement` (merge) and `own_agreement` (the own adapter against its own answers: 1 unless a re-tokenised
answer differs from what was generated). `bench/retention_fit.py` reports it.

    python bench/retention_outputs.py [--truth bench/results_retention_truth.json] [--prompts 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.predict import agreement, own_answers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", default=str(REPO / "bench" / "results_retention_truth.json"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from retention_truth import METHODS  # beside this file

    from analysis.consolidate.data import load_rows
    from analysis.evaluation import ModelSpec, load_model
    from analysis.merge import merge_adapters

    truth = json.loads(Path(args.truth).read_text())
    root, data = REPO / truth["protocol"]["adapters"], str(REPO / truth["protocol"]["data"])
    adapters = {d.name: load_adapter(d, name=d.name) for d in sorted(p.parent for p in root.glob("*/adapter_config.json"))}
    loaded = load_model(ModelSpec())
    model, tok = loaded.model, loaded.tokenizer
    t0 = time.perf_counter()
    prompts = {t: [r["prompt"] for r in load_rows(data, t, "train")[:args.prompts]] for t in adapters}
    answers = {t: own_answers(model, tok, adapters[t].modules, prompts[t]) for t in adapters}
    own = {t: agreement(model, tok, adapters[t].modules, prompts[t], answers[t]) for t in adapters}
    for k, m in enumerate(truth["merges"]):
        members = [adapters[n] for n in m["members"]]
        method, params = METHODS[m["method"]]
        merged = merge_adapters(members, method, weights=m["weights"], params=params).modules
        for t in m["tasks"]:
            t["output_agreement"] = agreement(model, tok, merged, prompts[t["task"]], answers[t["task"]])
            t["own_agreement"] = own[t["task"]]
        print(f"[{k + 1}/{len(truth['merges'])}] {m['method']} {'+'.join(m['members'])}: "
              + ", ".join(f"{t['task']} {t['output_agreement']:.2f}" for t in m["tasks"]), file=sys.stderr, flush=True)
    truth["protocol"]["output_prompts"] = args.prompts
    Path(args.truth).write_text(json.dumps(truth, indent=1) + "\n")
    print(json.dumps({"merges": len(truth["merges"]), "own_agreement": own,
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
