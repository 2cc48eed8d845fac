"""The Merge page's data-free comparison, timed (prints JSON; not part of `make test`).

Target (b) of issue 9: the 10 sample adapters (sample_adapters/*) x 5 methods (isolation, linear, ties,
svd, tsv; each with its declared defaults) merged and previewed in under 10 s on this 2-core machine.
Two routes, one run:
- `library`: what the page needs from the library, done the cheap way: the inputs' entry cores (p = 1%)
  once for all methods; each method merged (dense results re-factored straight away at the summed input
  rank, their spectra kept), the export rank chosen from those spectra (smallest rank with pooled
  relative error <= 5%, as the page's automatic rank; exact results stay exact), every module cut to it
  exactly, and the preview of that written adapter with the shared cores and the kept spectra;
- `workflow`: `analysis.workflow.run_merge` for each method (the pipeline the page calls), when it is
  importable, with the same shared cores.
Wall and CPU seconds are both reported: on a shared, loaded machine the CPU time of this single-threaded
work is the better estimate of its quiet wall time.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_merge_page.py [--threads 1]
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

from analysis.adapters.load import load_adapter  # noqa: E402
from analysis.adapters.model import LowRankDelta  # noqa: E402
from analysis.isolation import task_cores  # noqa: E402
from analysis.merge import get_method, merge_adapters  # noqa: E402
from analysis.merge.ops import truncate  # noqa: E402
from analysis.preview import preview_merge  # noqa: E402

METHODS = ("isolation", "linear", "ties", "svd", "tsv")
TARGET_ERROR, TARGET_SECONDS, GRANULARITY, CORE_P = 0.05, 10.0, "entries", 0.01


def cpu_seconds() -> float:
    """User + system CPU time of this process (tracks quiet wall time of 1-thread work on a loaded machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sample_paths() -> list[Path]:
    return sorted(p for p in (ROOT / "sample_adapters").iterdir() if (p / "adapter_config.json").exists())


def auto_rank(spectra: dict, cap: int) -> int:
    """Smallest rank whose pooled relative error over the modules is <= TARGET_ERROR (else the cap)."""
    total = sum(s.norm2 for s in spectra.values())
    for r in range(1, cap + 1):
        tail = sum(s.relative_error(r) ** 2 * s.norm2 for s in spectra.values())
        if total == 0 or (tail / total) ** 0.5 <= TARGET_ERROR:
            return r
    return cap


def library_route(adapters: list, cores: dict) -> dict:
    cap = sum(max(d.rank for d in a.modules.values()) for a in adapters)
    out = {}
    for method in METHODS:
        t = time.perf_counter()
        exact = get_method(method).is_exact(get_method(method).resolve_params({}))
        res = merge_adapters(adapters, method, rank=None if exact else cap)
        rank, modules = None, res.modules
        if not exact:
            rank = auto_rank(res.spectra, cap)
            modules = {m: truncate(d, rank) for m, d in res.modules.items()}  # exact: d is rank cap, factored
        pv = preview_merge(adapters, modules, rank=rank, granularity=GRANULARITY, p=CORE_P, cores=cores,
                           spectra=res.spectra or None)
        out[method] = {"seconds": round(time.perf_counter() - t, 3), "export_rank": rank,
                       "export_relative_error": round(pv["export"]["relative_error"] or 0.0, 4),
                       "low_rank_result": all(isinstance(d, LowRankDelta) for d in modules.values()),
                       "mean_core_retention": round(sum(s["core_retention"] for s in pv["per_task"].values())
                                                    / len(adapters), 4)}
    return out


def workflow_route(adapters: list, cores: dict) -> dict:
    try:
        from analysis.workflow import AdapterSet, run_merge
    except ImportError as exc:  # the pipeline is another helper's work in progress
        return {"skipped": f"analysis.workflow not importable: {exc}"}
    aset = AdapterSet.from_adapters(adapters)
    out = {}
    for method in METHODS:
        t = time.perf_counter()
        try:
            run = run_merge(aset, method, cores_default=(GRANULARITY, CORE_P), cores=cores)
        except Exception as exc:  # noqa: BLE001 - a bench reports, it does not stop
            out[method] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[method] = {"seconds": round(time.perf_counter() - t, 3), "export_rank": run.rank}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-workflow", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = sample_paths()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    adapters = [load_adapter(p) for p in paths]
    read = time.perf_counter() - t0
    t = time.perf_counter()
    cores = task_cores(adapters, granularity=GRANULARITY, p=CORE_P)
    t_cores = time.perf_counter() - t
    lib = library_route(adapters, cores)
    lib_total = read + t_cores + sum(v["seconds"] for v in lib.values())
    lib_cpu = cpu_seconds() - c0
    report = {"adapters": len(adapters), "modules": len(adapters[0].modules), "methods": list(METHODS),
              "threads": args.threads, "load_average_at_start": os.getloadavg(),
              "library": {"read_seconds": round(read, 3), "shared_cores_seconds": round(t_cores, 3),
                          "per_method": lib, "total_seconds": round(lib_total, 2),
                          "total_cpu_seconds": round(lib_cpu, 2),
                          "target_seconds": TARGET_SECONDS, "met": lib_total < TARGET_SECONDS}}
    if not args.skip_workflow:
        t, c = time.perf_counter(), cpu_seconds()
        cores_again = task_cores(adapters, granularity=GRANULARITY, p=CORE_P)
        wf = workflow_route(adapters, cores_again)
        wf_total = read + (time.perf_counter() - t)
        report["workflow"] = {"per_method": wf, "total_seconds": round(wf_total, 2),
                              "total_cpu_seconds": round(cpu_seconds() - c, 2),
                              "met": wf_total < TARGET_SECONDS and all("seconds" in v for v in wf.values())
                              if isinstance(wf, dict) and "skipped" not in wf else None}
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
