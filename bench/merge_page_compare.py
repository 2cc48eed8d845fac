"""Time the Merge page's data-free comparison: the 10 sample adapters x 5 methods through `run_merge`,
exactly as `app.cache.merge_run` calls it (one shared set of core masks, default export). Prints JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge_page_compare.py [--methods isolation,linear,...]

Target (issue 9): under 10 s on the 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.isolation import task_cores  # noqa: E402
from analysis.workflow import AdapterSet, run_merge  # noqa: E402

SAMPLE = REPO / "sample_adapters"
METHODS = "isolation,linear,task_arithmetic,ties,orthogonal"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=METHODS)
    args = ap.parse_args()
    paths = sorted(p for p in SAMPLE.iterdir() if (p / "adapter_config.json").is_file())
    t0 = time.perf_counter()
    adapters = AdapterSet.from_paths(paths)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    cores = task_cores(list(adapters.adapters), granularity="entries", p=0.01)
    cores_s = time.perf_counter() - t1
    per_method = {}
    for method in args.methods.split(","):
        t = time.perf_counter()
        run = run_merge(adapters, method, cores_default=("entries", 0.01), cores=cores)
        per_method[method] = {"seconds": round(time.perf_counter() - t, 3), "export_rank": run.rank,
                              "export_error": round(run.evidence["export"]["relative_error"], 5)}
    total = time.perf_counter() - t0
    print(json.dumps({"adapters": len(adapters), "load_s": round(load_s, 3), "cores_s": round(cores_s, 3),
                      "methods": per_method, "total_s": round(total, 3), "target_s": 10.0,
                      "meets_target": total < 10.0}, indent=2))


if __name__ == "__main__":
    main()
