"""Who ruins whom: every pair of the sample set merged by `cat` (and `linear`), and each adapter's reach.

For all 45 pairs, each task's retention as the data-light estimate reads it (`analysis.forecast`: does the merge
reproduce the own adapter's greedy answers on 16 unlabeled train prompts; on the ground truth's held-back merges it
ranked measured retention at Spearman 0.97, mean error 0.05; an estimate, not a measurement). Per adapter: its reach
(`analysis.reach`: mean KL(base + adapter || base) on text the base model wrote), how many partners it ruins under
`cat` (1 - their mean retention: "aggressiveness"), and how well it survives (its own mean retention). Prints JSON:
the matrices, the rank correlation of reach with aggressiveness and with survival, of the pair's reach log-ratio
with retention, and the pairs that keep both tasks at >= 0.9. About 5 minutes on two cores.

    python bench/reach_pairs.py [--out bench/results_reach_pairs.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.forecast import agreement_hits, outputs_value, own_answers  # noqa: E402
from analysis.merge import merge_adapters  # noqa: E402
from analysis.predict import spearman  # noqa: E402
from analysis.reach import Reach  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results_reach_pairs.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from retention_measure import Measurer  # beside this file

    t0 = time.perf_counter()
    meas = Measurer(str(REPO / "sample_adapters" / "tasks"), em_rows=1, nll_rows=1)
    model, tok = meas.model, meas.tokenizer
    dirs = sorted(p.parent for p in (REPO / "sample_adapters").glob("*/adapter_config.json"))
    adapters = {d.name: load_adapter(d, name=d.name) for d in dirs}
    names = sorted(adapters)
    reach = Reach(meas.loaded)
    own_reach = {n: reach.own(adapters[n]) for n in names}
    prompts = {t: meas.prompts(t, args.prompts) for t in names}
    answers = {t: own_answers(model, tok, adapters[t].modules, prompts[t]) for t in names}
    own_hits = {t: agreement_hits(model, tok, adapters[t].modules, prompts[t], answers[t]) for t in names}
    kept: dict[str, dict[str, dict[str, float]]] = {"cat": {n: {} for n in names}, "linear": {n: {} for n in names}}
    for a, b in itertools.combinations(names, 2):
        for method in kept:
            merged = merge_adapters([adapters[a], adapters[b]], method).modules
            for t, other in ((a, b), (b, a)):
                got = agreement_hits(model, tok, merged, prompts[t], answers[t])
                kept[method][t][other] = outputs_value(own_hits[t], got)
        print(f"{a} + {b}: cat {kept['cat'][a][b]:.2f}/{kept['cat'][b][a]:.2f}", file=sys.stderr, flush=True)
    cat = kept["cat"]
    aggressive = {j: 1 - sum(cat[t][j] for t in names if t != j) / (len(names) - 1) for j in names}
    survives = {t: sum(cat[t].values()) / (len(names) - 1) for t in names}
    pairs_x = [math.log(own_reach[t] / own_reach[j]) for t in names for j in names if t != j]
    pairs_y = [cat[t][j] for t in names for j in names if t != j]
    out = {
        "what": "retention by the data-light estimate (16 unlabeled train prompts per task), reach on the base's own text",
        "model": meas.identity, "probes": reach.identity()["probes"], "seconds": round(time.perf_counter() - t0, 1),
        "reach": own_reach, "aggressiveness_cat": aggressive, "survival_cat": survives,
        "spearman_reach_vs_aggressiveness": spearman([own_reach[n] for n in names], [aggressive[n] for n in names]),
        "spearman_reach_vs_survival": spearman([own_reach[n] for n in names], [survives[n] for n in names]),
        "spearman_pair_log_reach_ratio_vs_retention_cat": spearman(pairs_x, pairs_y),
        "pairs_keeping_both_at_0.9": {m: [[a, b] for a, b in itertools.combinations(names, 2)
                                          if min(kept[m][a][b], kept[m][b][a]) >= 0.9] for m in kept},
        "retention": kept}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "retention"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
