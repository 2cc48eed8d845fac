"""Merge benchmark on a 7B-shaped adapter set (prints JSON; not part of `make test`).

Four random LoRA adapters shaped like a 7B model's attention (32 layers x q,k,v,o, width 4096, r=16):
- `linear`, `cat` and `svd` merged and re-factored to rank 16 with the factored SVD (all 128 modules);
- PEFT's svd route for the same result: dense dW = sum_i w_i s_i B_i A_i, full `torch.linalg.svd`, keep
  16. It is timed on `--dense-modules` modules only and extrapolated linearly to 128 (every module has
  the same shape, so the cost per module is the same); on those modules the two results are compared,
  so the speed-up is at equal fidelity (relative difference reported);
- the isolation merge (rows: exactly low rank, on all modules; entries: dense, on `--entry-modules`
  modules, extrapolated), with time and peak memory, each in a fresh subprocess so ru_maxrss is its own.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_merge.py [--threads 1] [--dense-modules 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.adapters.model import Adapter, LowRankDelta  # noqa: E402
from analysis.merge import merge_adapters  # noqa: E402

LAYERS, KINDS, WIDTH, RANK, N = 32, ("q_proj", "k_proj", "v_proj", "o_proj"), 4096, 16, 4


def make_adapters(n_layers: int = LAYERS) -> list[Adapter]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(N):
        modules = {f"model.layers.{layer}.self_attn.{kind}": LowRankDelta(
            A=torch.randn(RANK, WIDTH, generator=g) / WIDTH**0.5,  # (r, n_in)
            B=torch.randn(WIDTH, RANK, generator=g) / RANK**0.5,  # (n_out, r)
            scale=2.0) for layer in range(n_layers) for kind in KINDS}
        out.append(Adapter(f"task{i}", Path(f"/bench/task{i}"), "peft", "llama-7b-shaped", {}, modules,
                           _sha256=f"{i:064d}"))
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def timed(fn):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def peft_svd_route(adapters: list[Adapter], module: str, rank: int) -> torch.Tensor:
    """What PEFT's add_weighted_adapter(combination_type='svd') does per module: dense sum, full SVD."""
    delta = sum(a.modules[module].dense(torch.float32) for a in adapters)  # (n_out, n_in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=True)  # PEFT's default full_matrices=True
    return (U[:, :rank] @ torch.diag(S[:rank])) @ Vh[:rank]  # (n_out, n_in)


def part_factored(args: argparse.Namespace) -> dict:
    adapters = make_adapters()
    modules = sorted(adapters[0].modules)
    out: dict = {"modules": len(modules)}
    for method, kwargs in (("linear", {"rank": RANK}), ("cat", {"rank": RANK}),
                           ("svd", {"params": {"rank": RANK}})):
        res, sec = timed(lambda: merge_adapters(adapters, method, weights=[1.0] * N, **kwargs))
        out[method] = {"seconds_all_modules": round(sec, 3), "rank": res.modules[modules[0]].rank}
        if method == "svd":
            ours = res
    subset = modules[: args.dense_modules]
    dense_sec, diffs = 0.0, []
    for m in subset:
        ref, sec = timed(lambda: peft_svd_route(adapters, m, RANK))
        dense_sec += sec
        mine = ours.modules[m].dense(torch.float64)
        diffs.append(float((mine - ref.double()).norm() / ref.double().norm()))
    per_module = dense_sec / len(subset)
    out["peft_dense_svd"] = {"modules_timed": len(subset), "seconds_per_module": round(per_module, 3),
                             "seconds_all_modules_extrapolated": round(per_module * len(modules), 1),
                             "max_relative_difference_vs_factored": max(diffs)}
    out["speedup_svd_vs_peft_route"] = round(per_module * len(modules) / out["svd"]["seconds_all_modules"], 1)
    return out


def part_isolation(args: argparse.Namespace) -> dict:
    n_layers = LAYERS if args.granularity == "rows" else max(1, args.entry_modules // len(KINDS))
    adapters = make_adapters(n_layers)
    base = rss_mb()
    res, sec = timed(lambda: merge_adapters(adapters, "isolation", params={"granularity": args.granularity}))
    n = len(res.modules)
    return {"granularity": args.granularity, "modules_timed": n, "seconds": round(sec, 2),
            "seconds_all_128_modules_extrapolated": round(sec * LAYERS * len(KINDS) / n, 1),
            "peak_rss_mb": round(rss_mb(), 1), "rss_before_merge_mb": round(base, 1),
            "merge_peak_increase_mb": round(rss_mb() - base, 1), "claims": res.info["claims"],
            "result_type": type(next(iter(res.modules.values()))).__name__}


def run_part(name: str, extra: list[str]) -> dict:
    """Each part in a fresh interpreter: its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--part", name, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["factored", "isolation"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dense-modules", type=int, default=2, help="modules timed on PEFT's dense route")
    ap.add_argument("--entry-modules", type=int, default=8, help="modules timed for entry isolation")
    ap.add_argument("--granularity", default="rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "factored":
        print(json.dumps(part_factored(args)))
        return
    if args.part == "isolation":
        print(json.dumps(part_isolation(args)))
        return
    common = ["--threads", str(args.threads)]
    report = {"shape": {"adapters": N, "layers": LAYERS, "kinds": list(KINDS), "width": WIDTH, "rank": RANK},
              "threads": args.threads, "torch": torch.__version__,
              "factored": run_part("factored", common + ["--dense-modules", str(args.dense_modules)]),
              "isolation_rows": run_part("isolation", common + ["--granularity", "rows"]),
              "isolation_entries": run_part("isolation", common + ["--granularity", "entries",
                                                                   "--entry-modules", str(args.entry_modules)])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
