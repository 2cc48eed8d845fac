"""Evaluation speed on the sample set: answer NLL vs exact match of one merged adapter, ten tasks x 64 rows.

The merged adapter is the linear merge of the ten sample adapters (`analysis.workflow.run_merge`, the adapter
written). Timed with `time.perf_counter` after the model is loaded (the load is reported apart): NLL is
teacher-forced and batched (no generation); exact match is the greedy-generation protocol. Prints JSON.
Target (issue 17): NLL <= 10 s on a 2-core machine. CPU seconds are printed next to wall seconds, and the load
average, because the machine is shared: wall time under load says more about the neighbours than the code. `--exact-tasks N` limits exact match to the first N
tasks (generation is the slow one); the per-row rate is reported so the full cost can be read off.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: two spin-wait on a shared CPU)")
    ap.add_argument("--rows", type=int, default=64, help="rows per task (the sample eval split has 64)")
    ap.add_argument("--exact-tasks", type=int, default=10, help="tasks timed by exact match (default all ten)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from analysis.evaluation import Evaluator, load_data, load_model, sample_task_names
    from analysis.workflow import AdapterSet, run_merge

    tasks = [t for t in sample_task_names() if (ROOT / "sample_adapters" / t / "adapter_config.json").is_file()]
    merged = run_merge(AdapterSet.from_paths([ROOT / "sample_adapters" / t for t in tasks]), "linear",
                       preview=False).written_modules()
    t0 = time.perf_counter()
    loaded = load_model()
    load_s = time.perf_counter() - t0
    data = load_data(None, metric="both").select(tasks)
    ev = Evaluator(loaded, data, limit=args.rows, batch_size=args.batch_size)
    ev.nll({}, tasks[:1])  # warm-up (first-call allocations), not timed
    t0, c0 = time.perf_counter(), time.process_time()
    nll = ev.nll(merged, tasks)
    nll_s, nll_cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(ev.scored_tokens(t) for t in tasks)
    exact_tasks = tasks[:args.exact_tasks]
    t0, c0 = time.perf_counter(), time.process_time()
    acc = ev.accuracy(merged, exact_tasks)
    exact_s, exact_cpu = time.perf_counter() - t0, time.process_time() - c0
    rows_exact = args.rows * len(exact_tasks)
    print(json.dumps({
        "bench": "evaluate", "model": loaded.identity.line(), "merged": f"linear merge of {len(tasks)} sample adapters",
        "tasks": len(tasks), "rows_per_task": args.rows, "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "model_load_seconds": round(load_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "nll": {"seconds": round(nll_s, 2), "cpu_seconds": round(nll_cpu, 2), "rows": args.rows * len(tasks), "answer_tokens": tokens,
                "rows_per_second": round(args.rows * len(tasks) / nll_s, 1), "target_seconds": 10.0,
                "target_met": nll_s <= 10.0, "mean_nll": round(sum(nll.values()) / len(nll), 4)},
        "exact": {"seconds": round(exact_s, 2), "cpu_seconds": round(exact_cpu, 2), "tasks": len(exact_tasks), "rows": rows_exact,
                  "rows_per_second": round(rows_exact / exact_s, 2),
                  "seconds_for_all_tasks_estimate": round(exact_s / rows_exact * args.rows * len(tasks), 1),
                  "mean_accuracy": round(sum(acc.values()) / len(acc), 4)},
        "exact_over_nll": round((exact_s / rows_exact) / (nll_s / (args.rows * len(tasks))), 1),
    }, indent=2))


if __name__ == "__main__":
    main()
