"""Write a merged adapter as a PEFT LoRA directory that `PeftModel.from_pretrained` loads.

Keys are `base_model.model.<module>.lora_A.weight` (r, n_in) and `...lora_B.weight` (n_out, r).
`r` is the most common module rank and `lora_alpha = r`; modules of other ranks get `rank_pattern`
and `alpha_pattern` entries with alpha = their rank, so PEFT's scaling is 1 everywhere and the
exported factors carry the merge exactly. `target_modules` lists the full module names so PEFT adds
LoRA to exactly the merged modules and nothing else. The inputs' non-LoRA tensors (heads, DoRA
magnitudes, LoRA biases) are written back when identical across inputs (`analysis.export.extras`);
a caller that drops them passes inputs without extras. Tensors are stored in the export dtype
(`--dtype`, fp32 by default); carried floating-point extras are cast to it too.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.adapters.peft_format import PEFT_PREFIX
from analysis.export.extras import plan_extras
from analysis.export.layout import export_factors


def common_value(adapters: list[Adapter], key: str) -> Any:
    values = {json.dumps(a.config.get(key), sort_keys=True) for a in adapters if a.config.get(key) is not None}
    return json.loads(values.pop()) if len(values) == 1 else None


def peft_config_for(plan_kinds: dict[str, str], inputs: Sequence[Adapter]) -> dict[str, Any]:
    """adapter_config.json keys that make PEFT load the carried extras (heads, DoRA, LoRA biases)."""
    kinds = set(plan_kinds.values())
    out: dict[str, Any] = {}
    if "modules_to_save" in kinds:
        out["modules_to_save"] = common_value(list(inputs), "modules_to_save")
    if "dora_magnitude" in kinds:
        out["use_dora"] = True
    if "lora_bias" in kinds:
        out["lora_bias"] = True
    if "bias" in kinds:
        out["bias"] = common_value(list(inputs), "bias") or "all"
    return out


def rank_config(ranks: Mapping[str, int]) -> dict[str, Any]:
    """`r`, `lora_alpha`, `rank_pattern`, `alpha_pattern`, `target_modules` of a LoraConfig giving every module
    scaling alpha / r = 1: the most common rank is `r` (= `lora_alpha`), the others are patterns."""
    r0 = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    pattern = {name: r for name, r in sorted(ranks.items()) if r != r0}
    return {"r": r0, "lora_alpha": r0, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "target_modules": sorted(ranks), "use_rslora": False}


def peft_files(modules: Mapping[str, Delta], *, rank: int | None, base_model: str | None,
               inputs: list[Adapter], dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors for adapter_model.safetensors, {file name: text}) of a PEFT LoRA directory."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    fan_in_fan_out = False
    for name, f in export_factors(modules, rank, target="PEFT"):
        down, up = f.stored(dtype)
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = down  # (r, n_in) or (r, in_ch, kh, kw)
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = up  # (n_out, r) or (n_out, r, 1, 1)
        ranks[name] = f.rank
        fan_in_fan_out |= f.fan_in_fan_out
    extras = plan_extras(inputs, "carry")
    tensors.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in extras.carried.items()})
    config = {
        "peft_type": "LORA",
        "task_type": common_value(inputs, "task_type"),
        "base_model_name_or_path": base_model,
        **rank_config(ranks),
        "use_dora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "lora_dropout": 0.0,
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        **peft_config_for(extras.kinds, inputs),
    }
    return tensors, {"adapter_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
