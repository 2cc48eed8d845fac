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
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.population.sketch import SketchConfig

TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class PlantedSpec:
    """Shape of a planted population. `modules` = layers x len(TARGETS); every module is (d_out, d_in)."""

    families: int = 100
    layers: int = 2
    d_out: int = 64
    d_in: int = 48
    core_rank: int = 4
    arm_rank: int = 4
    noise: float = 0.05
    seed: int = 0

    @property
    def rank(self) -> int:
        return self.core_rank + 2 * self.arm_rank

    @property
    def module_names(self) -> list[str]:
        return [f"model.layers.{layer}.self_attn.{t}" for layer in range(self.layers) for t in TARGETS]


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(w)) for w in words]))


def _family_factors(spec: PlantedSpec, family: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module: (B (d_out, R), A (R, d_in))}: columns/rows [core | arm 0 | arm 1], independent Gaussians."""
    rng = _rng(spec.seed, 1, family)
    out = {}
    for m in spec.module_names:
        b = rng.standard_normal((spec.d_out, spec.rank)) / np.sqrt(spec.d_out)  # (d_out, R)
        a = rng.standard_normal((spec.rank, spec.d_in)) / np.sqrt(spec.rank)  # (R, d_in)
        out[m] = (b, a)
    return out


def member(spec: PlantedSpec, index: int) -> tuple[Adapter, int, float]:
    """(adapter, family, t) of member `index`: family index % families, t drawn from (seed, index)."""
    family = index % spec.families
    rng = _rng(spec.seed, 2, index)
    t = float(rng.uniform())
    c, r0 = spec.core_rank, spec.core_rank + spec.arm_rank
    weights = np.ones(spec.rank)  # (R,) column weights of B: core 1, arm 0 (1 - t), arm 1 t
    weights[c:r0] = 1.0 - t
    weights[r0:] = t
    modules = {}
    for m, (b, a) in _family_factors(spec, family).items():
        bn = b * weights[None, :] + spec.noise * rng.standard_normal(b.shape) / np.sqrt(spec.d_out)  # (d_out, R)
        an = a + spec.noise * rng.standard_normal(a.shape) / np.sqrt(spec.rank)  # (R, d_in)
        modules[m] = LowRankDelta(A=torch.from_numpy(an.astype(np.float32)),
                                  B=torch.from_numpy(bn.astype(np.float32)), scale=1.0)
    name = f"f{family:04d}-m{index:07d}"
    adapter = Adapter(name=name, path=Path(name), format="peft", base_model="synthetic", config={},
                      modules=modules, _sha256=f"{spec.seed:08x}{index:056x}")
    return adapter, family, t


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
