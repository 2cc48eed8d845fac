"""The Merge page's data-free comparison, timed (prints JSON; not part of `make test`).

Target (b) of issue 9: the 10 sample adapters (sample_adapters/*) x 5 methods (isolation, linear, ties,
svd, tsv; each with its declared defaults and the page's default export: exact, or the automatic rank)
merged and previewed in under 10 s on this 2-core machine. What is timed is what the page runs, from
the adapters' files to every method's `MergeRun`:
  read the adapters + the shared entry cores (p = 1%, computed once for every method's preview and for
  isolation's own cores) + the comparison, two ways in one run:
- `one_at_a_time`: `analysis.workflow.run_merge` for each method in turn, one torch thread (per-method
  seconds are this route's);
- `side_by_side`: `analysis.workflow.parallel.run_side_by_side` (what the page calls through
  `app.cache.merge_runs`): the methods in a pool of `default_workers` threads (2 on 2 cores), one torch
  thread each, after the shared cores computed by as many threads (`task_cores(workers=...)`). Both routes must give identical evidence (checked here, and in the tests).
The server keeps the library imported between requests, so imports happen before the clock starts.
Wall and CPU seconds are both reported; on a shared, loaded machine compare them with the load average.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_merge_page.py [--workers N] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import analysis.clustering  # noqa: E402,F401 - imported by the server before any request
from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.isolation import task_cores  # noqa: E402
from analysis.threads import bounded_threads  # noqa: E402
from analysis.workflow import AdapterSet, CoreChoice, CoreSettings, ProgressReporter, run_merge  # noqa: E402
from analysis.workflow.parallel import default_workers, run_side_by_side  # noqa: E402

METHODS = ("isolation", "linear", "ties", "svd", "tsv")
TARGET_SECONDS, CORES = 10.0, ("entries", 0.01)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sample_paths() -> list[Path]:
    return sorted(p for p in (ROOT / "sample_adapters").iterdir() if (p / "adapter_config.json").exists())


def prepare(workers: int = 1) -> tuple[AdapterSet, object, dict[str, float]]:
    t = time.perf_counter()
    aset = AdapterSet.from_adapters([load_adapter(p) for p in sample_paths()])
    read = time.perf_counter() - t
    t = time.perf_counter()
    cores = task_cores(list(aset.adapters), granularity=CORES[0], p=CORES[1], workers=workers)
    return aset, cores, {"read_seconds": round(read, 3), "cores_seconds": round(time.perf_counter() - t, 3)}


def one_at_a_time() -> dict:
    t0, c0 = time.perf_counter(), cpu_seconds()
    aset, cores, setup = prepare()
    per, runs = {}, {}
    for method in METHODS:
        t = time.perf_counter()
        with bounded_threads(1):
            runs[method] = run_merge(aset, method, preview=CoreChoice(CoreSettings(*CORES), cores))
        per[method] = {"seconds": round(time.perf_counter() - t, 3), "export_rank": runs[method].rank}
    return {**setup, "per_method": per, "total_seconds": round(time.perf_counter() - t0, 2),
            "total_cpu_seconds": round(cpu_seconds() - c0, 2)}, runs


def side_by_side(workers: int) -> tuple[dict, dict]:
    t0, c0 = time.perf_counter(), cpu_seconds()
    aset, cores, setup = prepare(workers)  # the page computes the shared cores with the same workers
    jobs = {m: (lambda step, m=m: run_merge(aset, m, preview=CoreChoice(CoreSettings(*CORES), cores),
                                            progress=ProgressReporter(step))) for m in METHODS}
    runs = run_side_by_side(jobs, workers=workers)
    return {**setup, "workers": workers, "total_seconds": round(time.perf_counter() - t0, 2),
            "total_cpu_seconds": round(cpu_seconds() - c0, 2)}, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="side-by-side workers (default: the page's)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each route, alternating (best is reported)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    workers = args.workers or default_workers(len(METHODS))
    seq, par = [], []
    for _ in range(args.repeat):  # alternate, so a change of machine load touches both routes alike
        seq.append(one_at_a_time())
        par.append(side_by_side(workers))
    best_seq = min(seq, key=lambda r: r[0]["total_seconds"])
    best_par = min(par, key=lambda r: r[0]["total_seconds"])
    same = all(json.dumps(best_seq[1][m].evidence, sort_keys=True) == json.dumps(best_par[1][m].evidence, sort_keys=True)
               for m in METHODS)
    report = {"adapters": len(sample_paths()), "modules": len(best_seq[1]["linear"].result.modules),
              "methods": list(METHODS), "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
              "target_seconds": TARGET_SECONDS,
              "one_at_a_time": {**best_seq[0], "all_totals": [r[0]["total_seconds"] for r in seq],
                                "met": best_seq[0]["total_seconds"] < TARGET_SECONDS},
              "side_by_side": {**best_par[0], "all_totals": [r[0]["total_seconds"] for r in par],
                               "met": best_par[0]["total_seconds"] < TARGET_SECONDS},
              "identical_evidence": same,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
              "load_average_at_end": os.getloadavg()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
