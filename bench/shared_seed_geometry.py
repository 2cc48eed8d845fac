"""The shared-seed effect, data-free (seconds): how much the ten sample adapters' input subspaces overlap when they
were trained from one LoRA initialisation (bench/shared_seed, seed 0 for every task, as one script with one seed
publishes them) against a distinct seed per task (sample_adapters, the default set).

Per set: the mean over module and adapter pairs of the input-subspace similarity phi (Hu et al.; 1 = the same input
space, r/d for random subspaces), the output-space phi and the cosine of the updates (`analysis.overlap`), beside
the random baseline r/d. Prints JSON and writes bench/results_shared_seed_geometry.json.

    python bench/shared_seed_geometry.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.adapters import load_adapter  # noqa: E402
from analysis.overlap import overlap_table  # noqa: E402

SETS = {"distinct seeds (sample_adapters)": REPO / "sample_adapters",
        "one shared seed (bench/shared_seed)": REPO / "bench" / "shared_seed"}


def summarize(root: Path) -> dict[str, object]:
    dirs = sorted(p.parent for p in root.glob("*/adapter_config.json"))
    adapters = [load_adapter(d, name=d.name) for d in dirs]
    table = overlap_table(adapters)
    off = ~np.eye(len(adapters), dtype=bool)
    out: dict[str, object] = {"adapters": len(adapters), "modules": len(table)}
    for metric in ("input_subspace_similarity", "subspace_similarity", "cosine"):
        vals = np.stack([getattr(t, metric)[off] for t in table.values()])  # (modules, pairs)
        out[metric] = {"mean": round(float(vals.mean()), 4), "p5": round(float(np.quantile(vals, 0.05)), 4),
                       "p95": round(float(np.quantile(vals, 0.95)), 4)}
    # random r-dim subspaces of a d-dim space: E[phi] = r / d (input side: d = the module's input width)
    out["random_input_baseline"] = round(float(np.mean([8 / t.shape[1] for t in table.values()])), 4)
    seeds = sorted({json.loads((d / "training.json").read_text()).get("seed") for d in dirs})
    out["seeds"] = seeds if len(seeds) <= 3 else f"{len(seeds)} distinct"
    return out


def main() -> int:
    result = {name: summarize(root) for name, root in SETS.items() if root.is_dir()}
    (REPO / "bench" / "results_shared_seed_geometry.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
