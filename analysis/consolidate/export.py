"""Write a consolidated update as a PEFT LoRA directory, with `training.json` and `recipe.json`.

The factors are written as trained (the PEFT writer of `analysis.export`, scale folded in, alpha = r), so
`PeftModel.from_pretrained` reproduces the trained update exactly; `export_check` re-reads the file through
the project loader and reports the largest relative difference per module as the export fidelity.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.errors import AtlasError
from analysis.export.outdir import check_out_dir, staged, write_durable
from analysis.export.peft import peft_files
from analysis.export.writer import common_base, safetensors_bytes

WEIGHTS = "adapter_model.safetensors"
DELTA_FILE = "delta.safetensors"


def prepare_out(out: str | Path, force: bool) -> Path:
    out = Path(out)
    check_out_dir(out, force=force)  # --force replaces only an earlier export, never a folder of other files
    return out


def recipe_record(adapters: Sequence[Adapter], config: Mapping[str, Any], data_dir: str,
                  base: Mapping[str, Any] | None) -> dict[str, Any]:
    """What was trained from what: inputs with sha256, the settings, the data, and the base actually used
    (`base`: the model identity; the record's `base` names it as adapter_config.json's base_model_name_or_path
    does; without an identity, the inputs' common recorded base)."""
    name = str(base["name"]) if base else (common_base(list(adapters)) or "unknown")
    model_flag = f" --model {name}" if base and base.get("kind") != "sample" else ""
    return {"atlas_consolidation": 1,
            "inputs": [{"name": a.name, "path": str(Path(a.path).resolve()), "sha256": a.sha256} for a in adapters],
            "config": dict(config), "data": str(Path(data_dir).resolve()), "base": name,
            "model": dict(base) if base else None,
            "command": "adapter-atlas consolidate " + " ".join(str(Path(a.path)) for a in adapters)
            + f" --data {data_dir}{model_flag} --strategy {config.get('strategy')} --steps {config.get('steps')} "
            f"--rank {config.get('rank')} --seed {config.get('seed')} --cores {config.get('cores')} --p {config.get('p')} "
            f"--stages {config.get('stages')} --export-rank {config.get('export_rank')} --lr {config.get('lr')} "
            f"--full-lr {config.get('full_lr')}" + ("" if config.get("match_params", True) else " --no-match-params")}


def write_peft(out: str | Path, modules: Mapping[str, Delta], inputs: list[Adapter], *,
               texts: Mapping[str, str] | None = None, force: bool = False, base_model: str | None = None,
               dtype: str = "fp32", blobs: Mapping[str, bytes] | None = None) -> Path:
    """The PEFT directory (weights + adapter_config.json) plus extra text and binary files, replacing `out` if
    forced; tensors stored in `dtype` (`export_check` then reports the error of that dtype). `base_model`: the
    model trained on (default: the inputs' common base)."""
    from analysis.export.layout import export_dtype

    out = prepare_out(out, force)
    tensors, files = peft_files(modules, rank=None, base_model=base_model or common_base(inputs), inputs=inputs,
                                dtype=export_dtype(dtype))
    with staged(out) as tmp:  # the one atomic rule: the previous export or this one, never half of each
        write_durable(tmp / WEIGHTS, safetensors_bytes(tensors, {"format": "pt"}))
        for name, text in {**files, **dict(texts or {})}.items():
            write_durable(tmp / name, text.encode("utf-8"))
        for name, data in dict(blobs or {}).items():
            write_durable(tmp / name, data)
    return out


def export_check(out: str | Path, modules: Mapping[str, Delta]) -> dict[str, Any]:
    """Re-read the written adapter and compare every module with the trained update (relative Frobenius)."""
    from analysis.adapters import load_adapter

    back = load_adapter(Path(out))
    missing = sorted(set(modules) - set(back.modules))
    if missing:
        raise AtlasError(f"{out}: module {missing[0]} missing from the written adapter")
    worst = 0.0
    for m, d in modules.items():
        ref = d.dense(torch.float64)  # (n_out, n_in)
        err = float((back.modules[m].dense(torch.float64) - ref).norm() / ref.norm().clamp(min=1e-30))
        worst = max(worst, err)
    return {"max_relative_error": worst, "rank": max(d.rank for d in back.modules.values()), "refactored": False}


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, default=float) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json_text(data), encoding="utf-8")


def delta_bytes(modules: Mapping[str, Delta]) -> bytes:
    """The exact dense update per module as a safetensors file (`analysis.export.delta` layout)."""
    from analysis.export.delta import delta_files

    tensors, _, meta = delta_files(modules)
    return safetensors_bytes(tensors, {"format": "pt", **meta})
