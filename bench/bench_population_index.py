"""Population index and families, measured: the approximate index at 10^5 and 10^6, planted families.

  index N     a real index directory of N sketches (planted families, streamed through `stream_sketches`,
              which equals `sketch_adapter(member(i))` up to float32 rounding, tested): Parquet parts +
              catalog, then `sync_index` (the scan's update) builds the faiss index; `open_population`,
              then 1,000 `sketch_neighbors` queries (the CLI's route: approximate candidates + float32
              re-rank), latency median and p99, recall@10 against brute force over the same unit sketches.
  stream N    the same without files: N sketches generated in memory, `AnnIndex.build`, 1,000 queries.
  families    1,000 planted families of sizes 5-500 (log-uniform), sketches streamed: adjusted Rand of
              `families` against the planted labels, on all and on the families of size <= 10.
  weak W      2,000 adapters in 40 families of 50 with within-family cosine 0.1-0.3 (4 modules W x W,
              rank 4; W = 32 and the harder W = 12), written as PEFT folders and scanned at k = 32 and 64:
              families (sketch and --exact), neighbour precision@10 (sketch: 100 queries; exact re-rank: 30).
  cluster     `dask scheduler` and two `dask worker` processes started from the command line on loopback;
              `adapter-atlas scan --scheduler ADDRESS` against a local scan of the same 200 folders.
Each stage runs in its own process; peak memory = RSS of the stage's process tree (sampled every 0.2 s).

    python bench/bench_population_index.py --write            # all stages but stream 10^6
    python bench/bench_population_index.py --stage stream --n 1000000
    python bench/bench_population_index.py --stage stream --n 1000000 --keep /tmp/pop1m/kept   # + save (5 GB)
    python bench/bench_population_index.py --stage stream --n 1000000 --reuse /tmp/pop1m/kept  # queries only
    bench/quiet_queries.sh /tmp/pop1m/kept /tmp/bgjobs.pids      # queries only, listed jobs paused around them
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from analysis.population.sketch import SketchConfig  # noqa: E402
from analysis.population.synthetic import PlantedSpec, planted_sizes  # noqa: E402

CONFIG = SketchConfig()  # k = 32
QUERIES = 1000
RESULTS = REPO / "bench" / "results_population_index.json"


def _shas(n: int) -> list[str]:
    return [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(n)]


def _unit_stream(spec: PlantedSpec, n: int, config: SketchConfig = CONFIG) -> np.ndarray:
    """(n, k^2) float32 unit sketches, filled batch by batch (one copy in memory)."""
    from analysis.population.synthetic import stream_sketches

    out = np.empty((n, config.k ** 2), dtype=np.float32)
    t0 = time.perf_counter()
    for s in range(0, n, 2048):
        v = stream_sketches(spec, config, np.arange(s, min(n, s + 2048)))
        out[s:s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
        if s % 100_000 < 2048:
            print(f"stream: {s}/{n} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return out


def _brute_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10, block: int = 65536) -> np.ndarray:
    """(Q, k) positions of the exact top-k by inner product (self excluded), brute force in blocks."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    q = vectors[queries]
    for s in range(0, len(vectors), block):
        sims = q @ vectors[s:s + block].T  # (Q, b)
        pos = np.arange(s, s + sims.shape[1])
        sims[queries[:, None] == pos[None, :]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], 1)
        cand_i = np.concatenate([best_i, pos[top]], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def _query_bench(pop, queries: np.ndarray, truth: np.ndarray | None = None, gate: Path | None = None) -> dict:
    """1,000 timed `sketch_neighbors` queries, then recall@10 against `truth` (brute force when not given).

    `gate`: after loading and warming, create GATE.ready and wait for GATE.go; create GATE.done as soon as the
    timed loop ends (so a script can pause other jobs around the timed loop only, see `bench/quiet_queries.sh`).
    """
    from analysis.population.query import sketch_neighbors

    where = {p: i for i, p in enumerate(pop.paths)}
    for j in queries[:20]:  # warm: id table, faiss first call, the pages of the queried rows
        sketch_neighbors(pop, pop.paths[int(j)], 10)
    if gate is not None:
        _wait_gate(gate)
    load0 = _load_now()
    times, found = [], []
    for j in queries:
        t0 = time.perf_counter()
        hits = sketch_neighbors(pop, pop.paths[int(j)], 10)
        times.append(time.perf_counter() - t0)
        found.append([where[h["adapter"]] for h in hits])
    load1 = _load_now()
    if gate is not None:
        Path(f"{gate}.done").touch()
    out: dict = {}
    if truth is None:
        t0 = time.perf_counter()
        truth = _brute_top(pop.vectors, queries)
        out["brute_force_ms_per_query"] = round((time.perf_counter() - t0) / len(queries) * 1000, 1)
    recall = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
    ms = np.asarray(times) * 1000
    return {"queries": len(queries), "recall_at_10": round(recall, 4), "latency_ms_median": round(float(np.median(ms)), 2),
            "latency_ms_p99": round(float(np.quantile(ms, 0.99)), 2), "latency_ms_max": round(float(ms.max()), 2),
            **out, "load_at_queries": {"start": load0, "end": load1}, "_truth": truth}


def _load_now() -> dict:
    """The load average and the runnable tasks right now (/proc/loadavg's 4th field: the instantaneous load)."""
    fields = Path("/proc/loadavg").read_text().split()
    return {"loadavg": [float(x) for x in fields[:3]], "runnable": int(fields[3].split("/")[0])}


def _wait_gate(gate: Path, limit_s: float = 3600.0) -> None:
    Path(f"{gate}.ready").touch()
    print(f"waiting for {gate}.go", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    while not Path(f"{gate}.go").exists():
        if time.monotonic() - t0 > limit_s:
            raise SystemExit(f"{gate}.go: not created within {limit_s:.0f} s")
        time.sleep(0.05)


def stage_index(n: int) -> dict:
    from bench_population import TreeMonitor

    from analysis.population.ann import sync_index
    from analysis.population.query import open_population
    from analysis.population.store import IndexStore
    from analysis.population.synthetic import stream_sketches

    spec = PlantedSpec(families=max(1, n // 100))
    shas = _shas(n)
    with tempfile.TemporaryDirectory(prefix="atlas-ann-") as tmp, TreeMonitor() as mem:
        store = IndexStore.for_scan(Path(tmp) / "idx", CONFIG)
        t0 = time.perf_counter()
        for s in range(0, n, 8192):
            v = stream_sketches(spec, CONFIG, np.arange(s, min(n, s + 8192)))
            store.append_sketches([{"sha256": shas[s + i], "layout": "L", "base_model": "synthetic", "format": "peft",
                                    "norm": 1.0, "vector": v[i], "modules": [], "module_norm": [], "module_top_sv": []}
                                   for i in range(len(v))])
        store.write_catalog({"path": f"/fleet/a{i:07d}", "name": "", "signature": "x", "sha256": shas[i], "error": None}
                            for i in range(n))
        sketch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = sync_index(store)
        build_s = time.perf_counter() - t0
        ann_bytes = sum(p.stat().st_size for p in (Path(tmp) / "idx" / "ann").iterdir())
        t0 = time.perf_counter()
        pop = open_population(Path(tmp) / "idx")
        open_s = time.perf_counter() - t0
        queries = np.random.default_rng(1).choice(n, size=QUERIES, replace=False)
        result = _query_bench(pop, queries)
        result.pop("_truth")
        (index,) = pop.ann.values()
    return {"adapters": n, "families": spec.families, "kind": index.kind, "nprobe": index.nprobe,
            "lists": getattr(index.index, "nlist", None), "sketch_and_store_s": round(sketch_s, 1),
            "build_s": round(build_s, 1), "ann_file_mb": round(ann_bytes / 2 ** 20, 1), "open_s": round(open_s, 1),
            "peak_rss_mib": mem.mib, "sync": report, **result}


def stage_stream(n: int, *, keep: Path | None = None, reuse: Path | None = None, gate: Path | None = None) -> dict:
    """Stream n sketches, build the IVF index, time 1,000 queries.

    `keep`: save the unit vectors, the index, the brute-force truth and the build figures in that directory
    (~5 GB at 10^6; outside the repository). `reuse`: skip streaming and building, load them and rerun only
    the query phase (the record keeps the build figures of the run that made them).
    """
    import resource

    from analysis.population.ann import AnnIndex, sha_ids
    from analysis.population.query import Population

    if reuse is not None:
        pop, index, build, truth = _load_kept(reuse, n)
    else:
        spec = PlantedSpec(families=max(1, n // 1000))
        t0 = time.perf_counter()
        vectors = _unit_stream(spec, n)
        stream_s = time.perf_counter() - t0
        shas = _shas(n)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        index = AnnIndex.build(vectors, sha_ids(shas))
        build_s = time.perf_counter() - t0
        build = {"adapters": n, "families": spec.families, "kind": index.kind,
                 "lists": getattr(index.index, "nlist", None), "stream_s": round(stream_s, 1),
                 "build_s": round(build_s, 1), "vectors_mib": round(vectors.nbytes / 2 ** 20),
                 "index_codes_mib": round(n * CONFIG.k ** 2 / 2 ** 20), "rss_before_build_mib": round(rss0 / 1024),
                 "build_omp_threads": os.environ.get("OMP_NUM_THREADS"),
                 "build_loadavg": [round(x, 2) for x in os.getloadavg()]}
        pop = Population(root=Path("."), config=CONFIG, paths=_paths(n), sha256=shas, vectors=vectors,
                         norms=np.ones(n))
        pop.ann = {pop.bases[0]["key"]: index}
        truth = None
    queries = np.random.default_rng(1).choice(n, size=QUERIES, replace=False)
    result = _query_bench(pop, queries, truth, gate)
    truth = result.pop("_truth")
    if keep is not None:
        _keep(keep, pop, index, {**build, **{k: v for k, v in result.items() if k == "brute_force_ms_per_query"}},
              queries, truth)
    return {**build, "nprobe": index.nprobe, **result,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), **({"reused": str(reuse)} if reuse else {})}


def _paths(n: int) -> list[str]:
    return [f"/fleet/a{i:07d}" for i in range(n)]


def _keep(folder: Path, pop, index, build: dict, queries: np.ndarray, truth: np.ndarray) -> None:
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors.npy", pop.vectors)
    faiss.write_index(index.index, str(folder / "index.faiss"))
    np.save(folder / "truth.npy", truth)  # (Q, 10) positions of the brute-force top 10
    np.save(folder / "queries.npy", np.asarray(queries))
    (folder / "build.json").write_text(json.dumps(build, indent=1) + "\n")
    print(f"kept in {folder}", file=sys.stderr, flush=True)


def _load_kept(folder: Path, n: int):
    import faiss

    from analysis.population.ann import AnnIndex
    from analysis.population.query import Population

    build = json.loads((folder / "build.json").read_text())
    if build["adapters"] != n:
        raise SystemExit(f"{folder}: holds {build['adapters']} adapters, not --n {n}")
    vectors = np.load(folder / "vectors.npy")  # (n, k^2) float32, read whole (no page faults while timing)
    index = AnnIndex(faiss.read_index(str(folder / "index.faiss")), "ivf", n)
    queries = np.random.default_rng(1).choice(n, size=QUERIES, replace=False)
    if not np.array_equal(np.load(folder / "queries.npy"), queries):
        raise SystemExit(f"{folder}/queries.npy: not this bench's queries")
    shas = _shas(n)
    pop = Population(root=Path("."), config=CONFIG, paths=_paths(n), sha256=shas, vectors=vectors, norms=np.ones(n))
    pop.ann = {pop.bases[0]["key"]: index}
    return pop, index, build, np.load(folder / "truth.npy")


def _ari(truth: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return round(float(adjusted_rand_score(truth, labels)), 4)


def stage_families(n: int) -> dict:
    from analysis.population.families import families
    from analysis.population.query import Population
    from analysis.population.synthetic import family_of

    spec = PlantedSpec(sizes=planted_sizes(n, 5, 500), seed=2)
    count = spec.count
    vectors = _unit_stream(spec, count)
    pop = Population(root=Path("."), config=CONFIG, paths=[f"a{i}" for i in range(count)], sha256=_shas(count),
                     vectors=vectors, norms=np.ones(count))
    t0 = time.perf_counter()
    fam = families(pop)
    seconds = time.perf_counter() - t0
    truth = family_of(spec, np.arange(count))
    small = np.isin(truth, np.flatnonzero(np.bincount(truth) <= 10))
    return {"adapters": count, "families_planted": n, "sizes": [min(spec.sizes), int(np.median(spec.sizes)), max(spec.sizes)],
            "families_found": len(fam.sizes), "adjusted_rand": _ari(truth, fam.labels),
            "small_families": int(np.sum(np.bincount(truth) <= 10)),
            "adjusted_rand_small_families": _ari(truth[small], fam.labels[small]),
            "families_s": round(seconds, 1), "per_base": fam.per_base, "warnings": fam.warnings}


EXACT_QUERIES = 30  # each loads up to 1,000 adapters


def weak_spec(width: int) -> PlantedSpec:
    """40 families of 50, 4 modules width x width, rank 4 (2 shared, 2 own), within-family cosine 0.1-0.3."""
    return PlantedSpec(families=40, layers=2, d_out=width, d_in=width, core_rank=2, arm_rank=2, share=(0.1, 0.3),
                       sizes=(50,) * 40, seed=3)


def _precision(pop, truth_of: dict, queries: list[str], **kwargs) -> tuple[float, float]:
    from analysis.population.query import neighbors

    t0 = time.perf_counter()
    hits = [neighbors(pop, q, 10, **kwargs) for q in queries]
    precision = np.mean([np.mean([truth_of[h["adapter"]] == truth_of[q] for h in hs]) for q, hs in zip(queries, hits)])
    return round(float(precision), 4), round((time.perf_counter() - t0) / len(queries), 3)


def stage_weak(width: int, queries: int = 100) -> dict:
    from analysis.population.families import families
    from analysis.population.query import open_population
    from analysis.population.scan import scan
    from analysis.population.synthetic import write_population

    spec = weak_spec(width)
    out: dict = {"adapters": spec.count, "families_planted": spec.families, "within_family_cosine": spec.share,
                 "modules": f"{len(spec.module_names)} x {width} x {width}, rank {spec.rank}"}
    with tempfile.TemporaryDirectory(prefix="atlas-weak-") as tmp:
        ads = Path(tmp) / "ads"
        paths = write_population(spec, ads, spec.count)
        truth_of = {str(p): p.parent.name for p in paths}
        queries = [str(paths[i]) for i in np.random.default_rng(0).choice(len(paths), size=queries, replace=False)]
        for k in (32, 64):
            scan([ads], Path(tmp) / f"idx{k}", config=SketchConfig(k=k), scheduler="synchronous")
            pop = open_population(Path(tmp) / f"idx{k}")
            truth = np.asarray([truth_of[p] for p in pop.paths])
            row: dict = {}
            t0 = time.perf_counter()
            fam = families(pop)
            row["families"] = {"adjusted_rand": _ari(truth, fam.labels), "found": len(fam.sizes),
                               "seconds": round(time.perf_counter() - t0, 1), "warnings": fam.warnings,
                               "per_base": fam.per_base}
            t0 = time.perf_counter()
            fam = families(pop, exact=True)
            row["families_exact"] = {"adjusted_rand": _ari(truth, fam.labels), "found": len(fam.sizes),
                                     "seconds": round(time.perf_counter() - t0, 1)}
            row["precision_at_10_sketch"], _ = _precision(pop, truth_of, queries)
            row["precision_at_10_exact"], row["exact_s_per_query"] = _precision(pop, truth_of, queries[:EXACT_QUERIES],
                                                                                exact=True)
            out[f"k{k}"] = row
    return out


def stage_cluster(n: int) -> dict:
    from analysis.population.dask_cli import cli_cluster
    from analysis.population.query import open_population
    from analysis.population.scan import scan
    from analysis.population.synthetic import write_population

    with tempfile.TemporaryDirectory(prefix="atlas-cluster-") as tmp:
        ads = Path(tmp) / "ads"
        write_population(PlantedSpec(families=10), ads, n)
        t0 = time.perf_counter()
        scan([ads], Path(tmp) / "local", config=CONFIG, scheduler="synchronous")
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with cli_cluster(Path(tmp) / "dask", workers=2) as address:
            start_s = time.perf_counter() - t0
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "analysis.cli", "scan", str(ads), "--out", str(Path(tmp) / "remote"),
                                   "--scheduler", address, "--json"], capture_output=True, text=True, env=env, timeout=600)
            remote_s = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        a, b = open_population(Path(tmp) / "local"), open_population(Path(tmp) / "remote")
        same = a.paths == b.paths and a.sha256 == b.sha256 and a.vectors.tobytes() == b.vectors.tobytes()
    return {"adapters": n, "workers": 2, "cluster_start_s": round(start_s, 1), "local_synchronous_scan_s": round(local_s, 1),
            "scan_through_scheduler_s": round(remote_s, 1), "identical_index": bool(same)}


STAGES = {"index": stage_index, "stream": stage_stream, "families": stage_families, "weak": stage_weak,
          "cluster": stage_cluster}
PLAN = [("index", 100_000), ("families", 1000), ("weak", 32), ("weak", 12), ("cluster", 200)]


def _child(stage: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--n", str(n)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=list(STAGES), default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--write", action="store_true", help=f"save {RESULTS.name} (merged with what is there)")
    parser.add_argument("--keep", type=Path, help="stream: save vectors, index and truth in this directory")
    parser.add_argument("--reuse", type=Path, help="stream: rerun only the query phase from a --keep directory")
    parser.add_argument("--gate", type=Path, help="stream: wait for GATE.go before the timed queries "
                        "(GATE.ready when loaded, GATE.done after); see bench/quiet_queries.sh")
    parser.add_argument("--label", default=None, help="conditions of the run, saved with the record")
    args = parser.parse_args()
    if args.stage:
        n = args.n or dict(PLAN).get(args.stage, 1_000_000)
        extra = {k: getattr(args, k) for k in ("keep", "reuse", "gate") if getattr(args, k) is not None}
        if extra and args.stage != "stream":
            parser.error("--keep, --reuse and --gate apply to --stage stream only")
        result = STAGES[args.stage](n, **extra)
        if args.label:
            result["conditions"] = args.label
        print(json.dumps(result))
        if args.write:
            _save({f"{args.stage}_{n}": result})
        return
    results = {}
    for stage, n in PLAN:
        print(f"bench_population_index: {stage} n={n}", file=sys.stderr, flush=True)
        results[f"{stage}_{n}"] = _child(stage, n)
        if args.write:
            _save({f"{stage}_{n}": results[f"{stage}_{n}"]})
    print(json.dumps(results, indent=1))


def _save(entries: dict) -> None:
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for key, value in entries.items():
        saved[key] = {**value, "loadavg": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count()}
    RESULTS.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
