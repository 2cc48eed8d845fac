"""Synthetic adapter populations with planted families, for the population bench and tests.

Family f has, per module, a core update W_c (rank `core_rank`) and two arms W_0, W_1 (rank `arm_rank`
each). Member i of family f sits at a position t_i in [0, 1] along the family's path:

    dW_i = W_c + (1 - t_i) W_0 + t_i W_1 + noise          # LoRA of rank core_rank + 2 arm_rank

written as one LoRA: B = [B_c | (1-t) B_0 | t B_1] + eps, A = [A_c; A_0; A_1] + eps. This is how real
populations look (checkpoints of one run, a hyper-parameter sweep, seeds of one recipe): members of a
family share a core, and within a family similarity falls off smoothly with |t_i - t_j|, so exact
nearest neighbours are well defined rather than ties among equals. Members of different families are
independent random updates (cosine ~ 0). Everything is a pure function of (seed, index): a population
of any size can be streamed without keeping it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.population.sketch import SketchConfig

TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class PlantedSpec:
    """Shape of a planted population. `modules` = layers x len(TARGETS); every module is (d_out, d_in).

    `sizes`: family sizes (member indices fill family 0 first, then 1...; `families` is then len(sizes));
    None: member i is in family i % families. `share` = (lo, hi): weak-signal families instead of paths:
    member = sqrt(s) F + sqrt(1 - s) E_i with F the family's update and E_i the member's own (each of unit
    norm, ranks core_rank and arm_rank), s drawn per family in [lo, hi]: within-family cosine ~ s.
    """

    families: int = 100
    layers: int = 2
    d_out: int = 64
    d_in: int = 48
    core_rank: int = 4
    arm_rank: int = 4
    noise: float = 0.05
    seed: int = 0
    sizes: tuple[int, ...] | None = None
    share: tuple[float, float] | None = None

    @property
    def rank(self) -> int:
        return self.core_rank + (1 if self.share else 2) * self.arm_rank

    @property
    def count(self) -> int | None:
        """Members of a population with fixed sizes (None: any number)."""
        return sum(self.sizes) if self.sizes else None

    @property
    def module_names(self) -> list[str]:
        return [f"model.layers.{layer}.self_attn.{t}" for layer in range(self.layers) for t in TARGETS]


def planted_sizes(families: int, lo: int, hi: int, seed: int = 0) -> tuple[int, ...]:
    """Family sizes drawn log-uniformly in [lo, hi] (many small families, a few large ones)."""
    rng = _rng(seed, 4)
    return tuple(int(round(x)) for x in np.exp(rng.uniform(np.log(lo), np.log(hi), size=families)))


def family_of(spec: PlantedSpec, index: int | np.ndarray) -> int | np.ndarray:
    if spec.sizes is None:
        return index % spec.families
    return np.searchsorted(_bounds(spec.sizes), index, side="right")


@lru_cache(maxsize=16)
def _bounds(sizes: tuple[int, ...]) -> np.ndarray:
    return np.cumsum(sizes)


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(w)) for w in words]))


def _unit_lr(b: np.ndarray, a: np.ndarray, modules: int) -> np.ndarray:
    """b scaled so that ||b a||_F = 1 / sqrt(modules) (an adapter of unit norm over its modules)."""
    norm = np.sqrt(max(float(((b.T @ b) * (a @ a.T)).sum()), 1e-300))
    return b / (norm * np.sqrt(modules))


@lru_cache(maxsize=4096)
def _family_factors(spec: PlantedSpec, family: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module: (B (d_out, R), A (R, d_in))}: columns/rows [core | arm 0 | arm 1], independent Gaussians.

    Cached (streamed benches draw many members of one family); callers never modify the arrays."""
    rng = _rng(spec.seed, 1, family)
    out = {}
    width = spec.core_rank if spec.share else spec.rank
    for m in spec.module_names:
        b = rng.standard_normal((spec.d_out, width)) / np.sqrt(spec.d_out)  # (d_out, R)
        a = rng.standard_normal((width, spec.d_in)) / np.sqrt(width)  # (R, d_in)
        out[m] = (_unit_lr(b, a, len(spec.module_names)), a) if spec.share else (b, a)
    return out


def member_factors(spec: PlantedSpec, index: int) -> tuple[int, float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(family, t, {module: (B (d_out, R), A (R, d_in))}) of member `index`, float64, scale 1."""
    family = int(family_of(spec, index))
    rng = _rng(spec.seed, 2, index)
    t = float(rng.uniform())
    modules = {}
    if spec.share:
        s = float(_rng(spec.seed, 3, family).uniform(*spec.share))
        for m, (bf, af) in _family_factors(spec, family).items():
            be = rng.standard_normal((spec.d_out, spec.arm_rank)) / np.sqrt(spec.d_out)  # (d_out, r_own)
            ae = rng.standard_normal((spec.arm_rank, spec.d_in)) / np.sqrt(spec.arm_rank)  # (r_own, d_in)
            be = _unit_lr(be, ae, len(spec.module_names))
            modules[m] = (np.hstack([np.sqrt(s) * bf, np.sqrt(1 - s) * be]), np.vstack([af, ae]))
        return family, t, modules
    c, r0 = spec.core_rank, spec.core_rank + spec.arm_rank
    weights = np.ones(spec.rank)  # (R,) column weights of B: core 1, arm 0 (1 - t), arm 1 t
    weights[c:r0] = 1.0 - t
    weights[r0:] = t
    for m, (b, a) in _family_factors(spec, family).items():
        bn = b * weights[None, :] + spec.noise * rng.standard_normal(b.shape) / np.sqrt(spec.d_out)  # (d_out, R)
        an = a + spec.noise * rng.standard_normal(a.shape) / np.sqrt(spec.rank)  # (R, d_in)
        modules[m] = (bn, an)
    return family, t, modules


def member(spec: PlantedSpec, index: int) -> tuple[Adapter, int, float]:
    """(adapter, family, t) of member `index` (see `family_of`), t drawn from (seed, index)."""
    family, t, factors = member_factors(spec, index)
    modules = {m: LowRankDelta(A=torch.from_numpy(a.astype(np.float32)), B=torch.from_numpy(b.astype(np.float32)),
                               scale=1.0) for m, (b, a) in factors.items()}
    name = f"f{family:04d}-m{index:07d}"
    adapter = Adapter(name=name, path=Path(name), format="peft", base_model="synthetic", config={},
                      modules=modules, _sha256=f"{spec.seed:08x}{index:056x}")
    return adapter, family, t


def stream_sketches(spec: PlantedSpec, config: SketchConfig, indices: np.ndarray) -> np.ndarray:
    """(n, k*k) float32 sketch vectors of members `indices`, equal to `sketch_adapter(member(...))` up to
    float32 rounding of the factors, without building adapters: per module the factors of the batch are
    stacked and projected at once ((P^T B)(A Q), the same P and Q as `sketch.omega`). For 10^6-member benches."""
    from analysis.population.sketch import omega

    per = [member_factors(spec, int(i))[2] for i in indices]
    total = np.zeros((len(indices), config.k, config.k))  # (n, k, k)
    for m in spec.module_names:
        shape = (spec.d_out, spec.d_in)
        p = omega(config.seed, m, shape, "out", config.k).numpy()  # (d_out, k)
        q = omega(config.seed, m, shape, "in", config.k).numpy()  # (d_in, k)
        b = np.stack([f[m][0] for f in per]).astype(np.float32).astype(np.float64)  # (n, d_out, R)
        a = np.stack([f[m][1] for f in per]).astype(np.float32).astype(np.float64)  # (n, R, d_in)
        total += (p.T @ b) @ (a @ q)  # (n, k, R) @ (n, R, k)
    return total.reshape(len(indices), -1).astype(np.float32)


def write_peft(adapter: Adapter, folder: Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Save as a PEFT directory (adapter_config.json + adapter_model.safetensors); scale 1 = alpha / r."""
    folder.mkdir(parents=True, exist_ok=True)
    rank = next(iter(adapter.modules.values())).rank
    tensors = {}
    for m, d in adapter.modules.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = d.A.to(dtype).contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = d.B.to(dtype).contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": list(TARGETS),
              "base_model_name_or_path": adapter.base_model, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return folder


def write_population(spec: PlantedSpec, root: Path, count: int, *, start: int = 0) -> list[Path]:
    """Write members start..start+count-1 as PEFT directories under root/f<family>/m<index>."""
    paths = []
    for i in range(start, start + count):
        adapter, family, _ = member(spec, i)
        paths.append(write_peft(adapter, root / f"f{family:04d}" / f"m{i:07d}"))
    return paths


def sketch_members(indices: list[int], spec: PlantedSpec, config: SketchConfig) -> list[dict]:
    """Dask task for streamed benchmarks: generate and sketch members in the worker (no files), rows as the
    scan's sketch table has them, with `path` = "synthetic://<index>"."""
    from analysis.population.sketch import sketch_adapter
    from analysis.threads import bounded_threads

    rows = []
    with bounded_threads(1):
        for i in indices:
            adapter, _, _ = member(spec, i)
            sk = sketch_adapter(adapter, config)
            rows.append({"sha256": adapter.sha256, "layout": sk.layout, "base_model": adapter.base_model,
                         "format": adapter.format, "norm": sk.norm, "vector": sk.vector.astype(np.float32),
                         "modules": list(sk.modules), "module_norm": sk.module_norm.astype(np.float32),
                         "module_top_sv": sk.module_top_sv.reshape(-1).astype(np.float32),
                         "path": f"synthetic://{i}"})
    return rows
