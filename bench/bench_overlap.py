"""Benchmark: factored all-pairs overlap (`adapter-atlas overlap`) against a dense per-pair loop.

Writes N random rank-r PEFT adapters on M modules of width d (default 16 x 16 x 4096, r = 16) to a
temporary directory, then times, in the same run:
  factored: `adapter-atlas overlap --json` through a subprocess (start-up, loading, everything);
  dense:    for each module and pair, form both dW densely, their cosine, and
            scipy.linalg.subspace_angles on the dense dW (which orthonormalises each 4096 x 4096
            dW by a full SVD).
The dense loop at full size takes hours, so by default it is timed on `--dense-pairs` pairs of
the first module and extrapolated linearly to all M * N (N - 1) / 2 pairs (every pair costs the
same: two dense products and two dense SVDs); `--dense-pairs 0` runs all of it. Prints JSON.
Not part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import scipy.linalg
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_names(m: int) -> list[str]:
    return [f"model.layers.{i // len(PROJECTIONS)}.self_attn.{PROJECTIONS[i % len(PROJECTIONS)]}" for i in range(m)]


def write_adapters(root: Path, n: int, modules: list[str], d: int, r: int, seed: int) -> list[Path]:
    """N PEFT directories (adapter_config.json + adapter_model.safetensors) of random float32 factors."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        tensors = {}
        for m in modules:
            tensors[f"base_model.model.{m}.lora_A.weight"] = (rng.standard_normal((r, d)) / np.sqrt(d)).astype(np.float32)
            tensors[f"base_model.model.{m}.lora_B.weight"] = (rng.standard_normal((d, r)) * 0.01).astype(np.float32)
        path = root / f"adapter_{k:02d}"
        path.mkdir()
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
            "target_modules": list(PROJECTIONS), "base_model_name_or_path": "bench/random",
            "fan_in_fan_out": False, "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
        }))
        paths.append(path)
    return paths


def time_factored(paths: list[Path]) -> tuple[float, dict]:
    cli = REPO / ".venv" / "bin" / "adapter-atlas"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "analysis.cli"]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "overlap", *map(str, paths), "--json"], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"adapter-atlas overlap failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed, json.loads(proc.stdout)


def dense_pair(factors_i: tuple[np.ndarray, np.ndarray], factors_j: tuple[np.ndarray, np.ndarray], scale: float):
    """The straightforward route: dense dW for both, cosine, principal angles of their column spaces."""
    w_i = scale * factors_i[1].astype(np.float64) @ factors_i[0].astype(np.float64)  # (d, d)
    w_j = scale * factors_j[1].astype(np.float64) @ factors_j[0].astype(np.float64)  # (d, d)
    cos = float((w_i * w_j).sum() / (np.linalg.norm(w_i) * np.linalg.norm(w_j)))
    angles = scipy.linalg.subspace_angles(w_i, w_j)  # orth() of each: full SVD of a (d, d) matrix
    return cos, np.sort(np.degrees(angles))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--modules", type=int, default=16)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dense-pairs", type=int, default=2, help="pairs timed in the dense loop (0 = all, no extrapolation)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from safetensors.numpy import load_file

    modules = module_names(args.modules)
    all_pairs = [(m, i, j) for m in modules for i, j in combinations(range(args.adapters), 2)]
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        paths = write_adapters(Path(tmp), args.adapters, modules, args.width, args.rank, args.seed)
        t_factored, out = time_factored(paths)
        # dense loop over (a sample of) the pairs, reading the same files
        files = [load_file(str(p / "adapter_model.safetensors")) for p in paths]
        scale = 2.0  # lora_alpha / r as written above
        todo = all_pairs if args.dense_pairs <= 0 else all_pairs[: args.dense_pairs]
        start = time.perf_counter()
        worst_cos, worst_angle = 0.0, 0.0
        for m, i, j in todo:
            fi = (files[i][f"base_model.model.{m}.lora_A.weight"], files[i][f"base_model.model.{m}.lora_B.weight"])
            fj = (files[j][f"base_model.model.{m}.lora_A.weight"], files[j][f"base_model.model.{m}.lora_B.weight"])
            cos, angles = dense_pair(fi, fj, scale)
            # the two routes must agree, or the timing comparison is meaningless
            worst_cos = max(worst_cos, abs(cos - out["modules"][m]["cosine"][i][j]))
            worst_angle = max(worst_angle, float(np.abs(angles - np.array(out["modules"][m]["principal_angles_deg"][i][j])).max()))
        t_dense_measured = time.perf_counter() - start
    per_pair = t_dense_measured / len(todo)
    t_dense = per_pair * len(all_pairs)
    print(json.dumps({
        "adapters": args.adapters, "modules": args.modules, "width": args.width, "rank": args.rank,
        "pairs_total": len(all_pairs), "dense_pairs_timed": len(todo),
        "factored_cli_seconds": round(t_factored, 3),
        "dense_seconds_per_pair": round(per_pair, 3),
        "dense_seconds": round(t_dense, 1), "dense_extrapolated": len(todo) < len(all_pairs),
        "speedup": round(t_dense / t_factored, 1),
        "max_abs_cosine_diff": worst_cos, "max_abs_angle_diff_deg": worst_angle,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }, indent=2))


if __name__ == "__main__":
    main()
