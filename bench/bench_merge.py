"""Merge benchmark on a 7B-shaped adapter set (prints JSON; not part of `make test`).

Four random LoRA adapters shaped like a 7B model's attention (32 layers x q,k,v,o, width 4096, r=16):
- `linear`, `cat` and `svd` merged and re-factored to rank 16 with the factored SVD (all 128 modules);
- PEFT's svd route for the same result: dense dW = sum_i w_i s_i B_i A_i, full `torch.linalg.svd`, keep
  16. It is timed on `--dense-modules` modules only and extrapolated linearly to 128 (every module has
  the same shape, so the cost per module is the same); on those modules the two results are compared,
  so the speed-up is at equal fidelity (relative difference reported);
- the isolation merge (rows: exactly low rank, on all modules; entries: on `--entry-modules` modules,
  extrapolated), with time and peak memory, each in a fresh subprocess so ru_maxrss is its own;
- target (a) of issue 9: the default isolation merge (entry cores, p = 1%) of the four adapters, read from
  real PEFT folders, through `analysis.workflow.run_merge` as the CLI runs it (with a fixed rank the preview
  of the rank-64 adapter is made while merging) and the PEFT folder written, against the floor of that work (read + one dense pass + a linear-time top-1% selection per input and module), both
  measured in this run; target: within 3x of the floor and under 4 GB peak RSS.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_merge.py [--threads 1] [--dense-modules 2] [--only target]
"""
from __future__ import annotations

import argparse
import json
import os
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


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared, loaded machine it tracks the quiet wall time
    of single-threaded work far better than the wall clock does."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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


# --- target (a): the default isolation merge with a rank-64 PEFT export, preview on, against its floor ----

EXPORT_RANK, CORE_P = 64, 0.01


def write_adapters(root: Path, n_layers: int = LAYERS) -> list[Path]:
    """The four 7B-shaped adapters as real PEFT folders (fp32 safetensors), so 'read' is a real read."""
    from safetensors.torch import save_file

    paths = []
    for a in make_adapters(n_layers):
        d = root / a.name
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for m, delta in a.modules.items():
            tensors[f"base_model.model.{m}.lora_A.weight"] = delta.A.contiguous()
            tensors[f"base_model.model.{m}.lora_B.weight"] = delta.B.contiguous()
        save_file(tensors, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(KINDS),
            "base_model_name_or_path": "llama-7b-shaped", "task_type": "CAUSAL_LM", "fan_in_fan_out": False}))
        paths.append(d)
    return paths


def part_floor(args: argparse.Namespace) -> dict:
    """The least any entry-core merge must do: read the inputs, one dense pass over every (input, module),
    and a linear-time top-1% selection there (the same primitives the merge uses)."""
    import math

    from analysis.adapters.load import load_adapter
    from analysis.isolation import dense_into, top_indices

    t0, c0 = time.perf_counter(), cpu_seconds()
    adapters = [load_adapter(p) for p in sorted(Path(args.data).iterdir())]
    t_read = time.perf_counter() - t0
    buf = torch.empty(WIDTH, WIDTH)
    mag = torch.empty(WIDTH, WIDTH)
    selected = 0
    for m in sorted(adapters[0].modules):
        for a in adapters:
            W = dense_into(a.modules[m], buf)  # (n_out, n_in)
            torch.abs(W, out=mag)
            selected += int(top_indices(mag.view(-1), math.ceil(CORE_P * W.numel())).numel())
    return {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(cpu_seconds() - c0, 2),
            "read_seconds": round(t_read, 2), "selected": selected, "peak_rss_mb": round(rss_mb(), 1)}


def part_pipeline(args: argparse.Namespace) -> dict:
    """What `adapter-atlas merge --method isolation --rank 64` runs: `analysis.workflow.run_merge` (read,
    merge with the defaults: entry cores p = 1%, preview of the rank-64 adapter written, evidence) and
    `MergeRun.write` (the PEFT folder with recipe.yaml and preview.json, atomically)."""
    import tempfile

    from analysis.threads import bounded_threads
    from analysis.workflow import AdapterSet, ExportSpec, ProgressReporter, run_merge

    stages: dict[str, float] = {}
    current = {"stage": None, "since": 0.0}

    def on_step(stage: str, done: int, total: int, eta: float | None, label: str) -> None:
        now = time.perf_counter()
        if stage != current["stage"]:  # a new stage starts: the previous one is over
            if current["stage"] is not None:
                stages[current["stage"]] = stages.get(current["stage"], 0.0) + now - current["since"]
            current.update(stage=stage, since=now)

    t0, c0 = time.perf_counter(), cpu_seconds()
    aset = AdapterSet.from_paths(sorted(Path(args.data).iterdir()))
    stages["read"] = time.perf_counter() - t0
    with bounded_threads(1):
        run = run_merge(aset, "isolation", export=ExportSpec(rank=EXPORT_RANK), progress=ProgressReporter(on_step))
    on_step("write", 0, 1, None, "")  # closes the last stage of the merge
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = run.write(Path(tmp) / "merged")
        written_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    stages["write"] = time.perf_counter() - t
    stages = {k: v for k, v in stages.items() if v >= 0.005}
    methods = sorted({s.method for s in run.result.spectra.values()})
    tasks = run.evidence["tasks"]
    return {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(cpu_seconds() - c0, 2),
            "stages": {k: round(v, 2) for k, v in stages.items()},
            "peak_rss_mb": round(rss_mb(), 1), "modules": len(run.result.modules), "export_rank": run.rank,
            "export_relative_error": round(run.evidence["export"]["relative_error"], 4),
            "written_mb": round(written_mb, 1), "rank_r_routes": methods,
            "claims": run.evidence["method_info"]["claims"],
            "mean_core_retention": round(sum(t["core_retention"] for t in tasks) / len(tasks), 4)}


def target_a(common: list[str], n_layers: int) -> dict:
    """Floor, pipeline, floor again (the floor is the mean of the two runs that bracket the pipeline, so a
    change of machine load during the run shows up as their spread instead of biasing the ratio)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench_merge_"))
    try:
        write_adapters(tmp, n_layers)
        data = common + ["--data", str(tmp)]
        before = run_part("floor", data)
        pipe = run_part("pipeline", data)
        after = run_part("floor", data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    floor = (before["seconds"] + after["seconds"]) / 2
    return {"floor_seconds": round(floor, 2), "floor_runs": [before, after], "pipeline": pipe,
            "ratio_to_floor": round(pipe["seconds"] / floor, 2),
            "cpu_ratio_to_floor": round(pipe["cpu_seconds"] / ((before["cpu_seconds"] + after["cpu_seconds"]) / 2), 2),
            "target_ratio": 3.0,
            "peak_rss_gb": round(pipe["peak_rss_mb"] / 1024, 2), "target_rss_gb": 4.0,
            "met": pipe["seconds"] <= 3.0 * floor and pipe["peak_rss_mb"] < 4096}


def run_part(name: str, extra: list[str]) -> dict:
    """Each part in a fresh interpreter: its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--part", name, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["factored", "isolation", "floor", "pipeline"], default=None)
    ap.add_argument("--data", default=None, help="(internal) folder of the written adapters")
    ap.add_argument("--layers", type=int, default=LAYERS, help="layers of target (a) (a smoke test uses fewer)")
    ap.add_argument("--only", choices=["all", "target"], default="all", help="target: only target (a)")
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
    if args.part in ("floor", "pipeline"):
        print(json.dumps(part_floor(args) if args.part == "floor" else part_pipeline(args)))
        return
    common = ["--threads", str(args.threads)]
    report = {"shape": {"adapters": N, "layers": args.layers, "kinds": list(KINDS), "width": WIDTH, "rank": RANK},
              "threads": args.threads, "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
              "target_a_isolation_rank64_export": target_a(common, args.layers)}
    if args.only == "all":
        report["factored"] = run_part("factored", common + ["--dense-modules", str(args.dense_modules)])
        report["isolation_rows"] = run_part("isolation", common + ["--granularity", "rows"])
        report["isolation_entries"] = run_part("isolation", common + ["--granularity", "entries",
                                                                      "--entry-modules", str(args.entry_modules)])
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
