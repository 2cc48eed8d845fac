"""Before any training: can isolating each task's core parameters matter on this adapter set?

Two numbers decide it, both data-free and computed in seconds from the weights:
1. **Energy inside the core.** Share of a task's update energy ||dW||_F^2 that lies in its top-p core
   (rows: top-p output rows by row energy; entries: top-p entries by |dW|), pooled over modules, as p grows.
   A random p-subset holds p of the energy in expectation, so the ratio share / p says how concentrated the
   update is. If the core holds little energy, freezing or transplanting it protects little of the task.
2. **Do cores collide beyond chance?** Core Jaccard per pair against the random-set baseline: two random
   k-subsets of n positions meet in k^2 / n positions in expectation, so the pooled random Jaccard is
   sum_m k_m^2/n_m / (2 sum_m k_m - sum_m k_m^2/n_m). The paper groups tasks whose Jaccard >= tau = 0.1;
   if every pair sits near the random baseline, the grouping step never fires and isolation reduces to
   "each task keeps its own positions", whose benefit then rests on (1).

Usage: python bench/isolation_headroom.py [ADAPTER_DIR ...] [--out bench/results_isolation_headroom.json]
Defaults to the ten sample adapters. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.isolation import importance, top_indices  # noqa: E402

PS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
GRANULARITIES = ("rows", "entries")


def energy_scores(delta, granularity: str) -> torch.Tensor:
    """Per-position energy: row energy (n_out,) for rows, dW^2 (n_out, n_in) for entries."""
    s = importance(delta, granularity)
    return s.double() ** 2 if granularity == "entries" else s.double()  # |dW| -> dW^2


def core_positions(scores: torch.Tensor, p: float) -> torch.Tensor:
    n = scores.numel()
    k = min(n, max(1, math.ceil(p * n)))  # the same count as analysis.isolation.top_fraction
    return top_indices(scores.float(), k)  # (k,) flat positions


def headroom(adapters, ps=PS, granularities=GRANULARITIES) -> dict:
    names = [a.name for a in adapters]
    modules = sorted(set.intersection(*(set(a.modules) for a in adapters)))
    out: dict = {"adapters": names, "modules": len(modules), "p": list(ps), "granularities": {}}
    for g in granularities:
        core_e = np.zeros((len(adapters), len(ps)))  # energy inside the core
        total_e = np.zeros(len(adapters))
        inter = np.zeros((len(ps), len(adapters), len(adapters)))
        sizes = np.zeros((len(ps), len(adapters)))
        rand_inter = np.zeros(len(ps))  # expected intersection of two random cores, pooled
        rand_size = np.zeros(len(ps))
        for m in modules:
            scores = [energy_scores(a.modules[m], g).reshape(-1) for a in adapters]
            n = scores[0].numel()
            for i, s in enumerate(scores):
                total_e[i] += float(s.sum())
            for j, p in enumerate(ps):
                pos = [core_positions(s, p) for s in scores]
                k = pos[0].numel()
                rand_inter[j] += k * k / n
                rand_size[j] += k
                masks = []
                for i, (s, q) in enumerate(zip(scores, pos)):
                    core_e[i, j] += float(s[q].sum())
                    mask = torch.zeros(n, dtype=torch.bool)
                    mask[q] = True
                    masks.append(mask)
                    sizes[j, i] += k
                mm = torch.stack(masks).float()  # (N, n)
                inter[j] += (mm @ mm.T).double().numpy()
        share = core_e / np.maximum(total_e[:, None], 1e-300)  # (N, P)
        rows = []
        for j, p in enumerate(ps):
            union = sizes[j][:, None] + sizes[j][None, :] - inter[j]
            jac = inter[j] / np.maximum(union, 1)
            pairs = [float(jac[a, b]) for a, b in combinations(range(len(adapters)), 2)]
            rj = rand_inter[j] / (2 * rand_size[j] - rand_inter[j])
            rows.append({
                "p": p,
                "energy_share": {n_: round(float(share[i, j]), 4) for i, n_ in enumerate(names)},
                "energy_share_mean": round(float(share[:, j].mean()), 4),
                "energy_share_over_random": round(float(share[:, j].mean() / p), 2),
                "jaccard_mean": round(float(np.mean(pairs)), 5),
                "jaccard_max": round(float(np.max(pairs)), 5),
                "jaccard_max_pair": list(max(combinations(names, 2),
                                             key=lambda ab: jac[names.index(ab[0]), names.index(ab[1])])),
                "jaccard_random": round(float(rj), 5),
                "pairs_at_or_above_tau_0.1": int(sum(x >= 0.1 for x in pairs)),
            })
        out["granularities"][g] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapters", nargs="*", help="adapter folders (default: the ten sample adapters)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_isolation_headroom.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    paths = args.adapters or sorted(str(p.parent) for p in (REPO / "sample_adapters").glob("*/adapter_config.json"))
    t0 = time.perf_counter()
    adapters = [load_adapter(p) for p in paths]
    result = headroom(adapters)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["inputs"] = [str(Path(p).relative_to(REPO)) if Path(p).is_relative_to(REPO) else p for p in paths]
    text = json.dumps(result, indent=1)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
