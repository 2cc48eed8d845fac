"""Population scale, measured: sketch accuracy, neighbour recall, family recovery, and scan throughput.

Synthetic populations with planted families (`analysis.population.synthetic`: per family a shared core
and a path t in [0, 1] between two arms; small shapes so it runs on 2 shared cores).

  accuracy  2,000 adapters in memory: recall@10 of sketch neighbours against exact all-pairs cosines
            (ground truth by densifying every module, an independent route), adjusted Rand index of the
            families against the planted ones, and the sketch error against the exact variance and the bound.
  files     N adapters written as PEFT directories, then `scan` (LocalCluster, process workers), an
            unchanged rescan, and queries (open, 100 neighbour queries, families) on the index.
  stream    N adapters generated inside the Dask tasks (no files): sketch + Parquet store + queries, the
            stages that dominate at 10^5; the per-adapter file cost comes from the `files` stage.
  large     CPU seconds per adapter at real size (Llama-2-7B, rank 16 on all 224 linear layers, 80 MB fp16):
            the figure a 10^6 projection starts from.
Each stage runs in its own process; peak memory = max over time of RSS summed over the stage's process and
its children (the Dask workers), sampled every 0.2 s. Prints JSON; `--write` saves bench/results_population.json.

    python bench/bench_population.py --write                    # all stages (~1 h on 2 busy cores; 10^5 dominates)
    python bench/bench_population.py --stage stream --n 100000  # one stage
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from analysis.population.sketch import SketchConfig  # noqa: E402
from analysis.population.synthetic import PlantedSpec  # noqa: E402

SPEC = PlantedSpec()  # 100 families, 4 modules of 64 x 48, rank 12
HARD = PlantedSpec(families=50, noise=0.15, seed=1)  # 40 per family, noisier: finer neighbour ranking
CONFIG = SketchConfig()  # k = 32: 1,024 float32 per adapter
WORKERS = 2


class TreeMonitor:
    """Peak RSS summed over this process and its descendants (the Dask workers), and their CPU seconds.

    Sampled every 0.2 s; CPU seconds are taken at the last sample, while the workers are still alive, so
    they count the work whatever the machine's load (wall time on a shared machine does not)."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.peak = 0
        self.cpu = 0.0
        self._cpu_start = self._sample()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, float]:
        rss, cpu = 0, 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        return rss, cpu

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, cpu = self._sample()
            self.peak = max(self.peak, rss)
            self.cpu = max(self.cpu, cpu - self._cpu_start)
            self._stop.wait(self.every)

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2 ** 20, 1)


# ---- accuracy ----------------------------------------------------------------------------------------

def _accuracy(spec: PlantedSpec, n: int, config: SketchConfig) -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from analysis.population.families import families
    from analysis.population.query import Population
    from analysis.population.sketch import adapter_variance, sketch_adapter, variance_bound
    from analysis.population.synthetic import member

    members = [member(spec, i) for i in range(n)]
    names = spec.module_names
    dense = np.stack([np.concatenate([a.modules[m].dense(torch.float64).numpy().ravel() for m in names])
                      for a, _, _ in members])  # (N, sum n_out n_in): the exact route
    t0 = time.perf_counter()
    raw = np.stack([sketch_adapter(a, config).vector for a, _, _ in members])  # (N, k^2)
    sketch_s = time.perf_counter() - t0
    norms = np.linalg.norm(dense, axis=1)
    exact = (dense @ dense.T) / np.outer(norms, norms)  # (N, N) exact aggregated cosine
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    approx = unit @ unit.T
    off = ~np.eye(n, dtype=bool)
    # recall@10: overlap of the sketch top-10 with the exact top-10 (self excluded)
    e, a = np.where(off, exact, -np.inf), np.where(off, approx, -np.inf)
    top_e, top_a = np.argsort(-e, axis=1)[:, :10], np.argsort(-a, axis=1)[:, :10]
    recall = float(np.mean([len(set(top_e[i]) & set(top_a[i])) / 10 for i in range(n)]))
    # families from the sketches (the library's route), against the planted labels
    pop = Population(root=Path("."), config=config, paths=[f"m{i}" for i in range(n)], sha256=[""] * n,
                     vectors=unit.astype(np.float32), norms=norms)
    fam = families(pop)
    ari = float(adjusted_rand_score([f for _, f, _ in members], fam.labels))
    # inner-product error against the exact variance (sampled pairs) and the bound, in units of |X||Y|
    inner_exact = dense @ dense.T
    inner_est = raw @ raw.T
    z = ((inner_est - inner_exact) / np.outer(norms, norms))[off]
    rng = np.random.default_rng(0)
    pairs = rng.choice(n, size=(400, 2), replace=False)
    predicted = [adapter_variance(members[i][0].modules, members[j][0].modules, config.k)
                 / (norms[i] * norms[j]) ** 2 for i, j in pairs]
    observed = [z_ij ** 2 for z_ij in ((inner_est - inner_exact) / np.outer(norms, norms))[pairs[:, 0], pairs[:, 1]]]
    bound = variance_bound(1.0, 1.0, config.k)
    within = exact[np.equal.outer(fam.labels, fam.labels) & off]
    return {
        "adapters": n, "families_planted": spec.families, "k": config.k, "sketch_floats": config.k ** 2,
        "recall_at_10": round(recall, 4), "adjusted_rand": round(ari, 4), "families_found": len(fam.sizes),
        "cosine_error": {"rms": round(float(np.sqrt(np.mean((approx - exact)[off] ** 2))), 4),
                         "p99_abs": round(float(np.quantile(np.abs(approx - exact)[off], 0.99)), 4)},
        "normalised_inner_error": {
            "rms_all_pairs": round(float(np.sqrt(np.mean(z ** 2))), 4),
            "rms_bound": round(float(np.sqrt(bound)), 4),
            "mean_predicted_var_400_pairs": float(np.mean(predicted)),
            "mean_observed_sq_error_400_pairs": float(np.mean(observed)),
            "fraction_over_3_sigma_bound": float(np.mean(np.abs(z) > 3 * np.sqrt(bound))),
        },
        "within_family_exact_cosine_p5_p50": [round(float(x), 3) for x in np.quantile(within, [0.05, 0.5])],
        "sketch_seconds_per_1000_one_core": round(sketch_s / n * 1000, 3),
    }


def stage_accuracy(n: int) -> dict:
    return {"main": _accuracy(SPEC, n, CONFIG), "hard": _accuracy(HARD, n, CONFIG),
            "hard_k16": _accuracy(HARD, n, SketchConfig(k=16))}


# ---- throughput -----------------------------------------------------------------------------------------

def _queries(index: Path) -> dict:
    from analysis.population.families import families
    from analysis.population.query import neighbors, open_population

    t0 = time.perf_counter()
    pop = open_population(index)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in np.linspace(0, len(pop) - 1, 100).astype(int):
        neighbors(pop, pop.paths[j], 10)
    t_nn = (time.perf_counter() - t0) / 100
    t0 = time.perf_counter()
    fam = families(pop)
    t_fam = time.perf_counter() - t0
    return {"open_s": round(t_open, 3), "neighbors_query_s": round(t_nn, 4), "families_s": round(t_fam, 3),
            "families_found": len(fam.sizes)}


def stage_files(n: int) -> dict:
    from analysis.population.scan import scan
    from analysis.population.synthetic import write_population

    with tempfile.TemporaryDirectory(prefix="atlas-pop-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_population(SPEC, root / "ads", n)
        write_s = time.perf_counter() - t0
        with TreeMonitor() as mem:
            report = scan([root / "ads"], root / "idx", config=CONFIG, workers=WORKERS, batch_size=64)
        t0 = time.perf_counter()
        again = scan([root / "ads"], root / "idx", config=CONFIG, scheduler="synchronous")
        rescan_s = time.perf_counter() - t0
        queries = _queries(root / "idx")
        index_bytes = sum(p.stat().st_size for p in (root / "idx").rglob("*.parquet"))
    return {"adapters": n, "workers": WORKERS, "write_files_s": round(write_s, 1), "scan_s": round(report.seconds, 1),
            "scan_s_per_1000": round(report.seconds / n * 1000, 2), "peak_rss_mib": mem.mib,
            "cpu_s_per_1000": round(mem.cpu / n * 1000, 2),
            "sketched": report.sketched, "failed": len(report.failed), "unchanged_rescan_s": round(rescan_s, 2),
            "unchanged_rescan_sketched": again.sketched, "index_bytes_per_adapter": round(index_bytes / n),
            **queries}


def stage_stream(n: int) -> dict:
    from analysis.population.scan import map_batches
    from analysis.population.store import IndexStore
    from analysis.population.synthetic import sketch_members

    with tempfile.TemporaryDirectory(prefix="atlas-stream-") as tmp:
        index = Path(tmp) / "idx"
        store = IndexStore.for_scan(index, CONFIG)
        batches = (list(range(s, min(n, s + 128))) for s in range(0, n, 128))
        catalog, buffer, done = [], [], 0
        with TreeMonitor() as mem:
            t0 = time.perf_counter()
            for rows in map_batches(sketch_members, batches, SPEC, CONFIG, workers=WORKERS):
                for row in rows:
                    catalog.append({"path": row.pop("path"), "name": "", "signature": "x", "sha256": row["sha256"],
                                    "error": None})
                    buffer.append(row)
                if len(buffer) >= 4096:
                    store.append_sketches(buffer)
                    buffer = []
                done += len(rows)
                if done % 10000 < 128:
                    print(f"stream: {done}/{n} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
            store.append_sketches(buffer)
            store.write_catalog(catalog)
            seconds = time.perf_counter() - t0
        queries = _queries(index)
    return {"adapters": n, "workers": WORKERS, "sketch_store_s": round(seconds, 1),
            "sketch_store_s_per_1000": round(seconds / n * 1000, 2), "peak_rss_mib": mem.mib,
            "cpu_s_per_1000": round(mem.cpu / n * 1000, 2), **queries}


LLAMA_7B = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
            "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096),
            "mlp.down_proj": (4096, 11008)}


def stage_large(n: int) -> dict:
    """Per-adapter CPU cost at real size: rank-16 LoRAs on every linear layer of a Llama-2-7B (224 modules)."""
    import torch

    from analysis.adapters import load_adapter
    from analysis.adapters.model import Adapter, LowRankDelta
    from analysis.population.sketch import sketch_adapter
    from analysis.population.synthetic import write_peft

    torch.set_num_threads(1)

    def adapter(seed: int) -> Adapter:
        g = torch.Generator().manual_seed(seed)
        modules = {f"model.layers.{layer}.{t}": LowRankDelta(A=torch.randn(16, n_in, generator=g) / 64,
                                                             B=torch.randn(n_out, 16, generator=g) / 64, scale=2.0)
                   for layer in range(32) for t, (n_out, n_in) in LLAMA_7B.items()}
        return Adapter(name=f"a{seed}", path=Path("."), format="peft", base_model="llama-2-7b", config={},
                       modules=modules)

    first = adapter(0)
    t0 = time.process_time()
    sketch_adapter(first, CONFIG)
    cold = time.process_time() - t0  # includes drawing every test matrix once per worker
    warm = []
    for seed in range(1, n + 1):
        other = adapter(seed)
        t0 = time.process_time()
        sketch_adapter(other, CONFIG)
        warm.append(time.process_time() - t0)
    with tempfile.TemporaryDirectory(prefix="atlas-large-") as tmp:
        folder = write_peft(first, Path(tmp) / "a")
        size = sum(f.stat().st_size for f in folder.iterdir())
        t0 = time.process_time()
        sketch_adapter(load_adapter(folder), CONFIG)  # read, NaN scan, sha256, sketch
        full = time.process_time() - t0
    return {"modules": len(first.modules), "rank": 16, "file_mb_fp16": round(size / 1e6, 1),
            "sketch_cpu_s_first_per_worker": round(cold, 3), "sketch_cpu_s_warm": round(float(np.median(warm)), 3),
            "load_hash_sketch_cpu_s": round(full, 3)}


STAGES = {"accuracy": stage_accuracy, "files": stage_files, "stream": stage_stream, "large": stage_large}
PLAN = [("accuracy", 2000), ("large", 3), ("files", 10_000), ("stream", 10_000), ("stream", 100_000)]


def _child(stage: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--n", str(n)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=list(STAGES), default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="save bench/results_population.json")
    parser.add_argument("--update", nargs="+", metavar="STAGE_N", default=None,
                        help="rerun only these entries (e.g. files_10000) and rewrite them in the saved results")
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args.n or dict(PLAN)[args.stage])))
        return
    if args.update:
        path = REPO / "bench" / "results_population.json"
        results = json.loads(path.read_text())
        for entry in args.update:
            stage, n = entry.rsplit("_", 1)
            print(f"bench_population: {stage} n={n} (update)", file=sys.stderr, flush=True)
            results[entry] = _child(stage, int(n))
            results.setdefault("updated", {})[entry] = [round(x, 2) for x in os.getloadavg()]
            path.write_text(json.dumps(results, indent=1) + "\n")
        return
    load = os.getloadavg()
    results = {"machine": {"cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load]},
               "spec": SPEC.__dict__, "sketch": CONFIG.__dict__}
    for stage, n in PLAN:
        print(f"bench_population: {stage} n={n}", file=sys.stderr, flush=True)
        results[f"{stage}_{n}"] = _child(stage, n)
        results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.write:  # after every stage, so a long last stage cannot lose the others
            (REPO / "bench" / "results_population.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
