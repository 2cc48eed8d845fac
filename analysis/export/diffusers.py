"""Write a merged adapter in the layout diffusers' `save_lora_weights` writes, which `pipe.load_lora_weights`
reads exactly: `pytorch_lora_weights.safetensors` with PEFT-style keys under each pipeline component,
`unet.<module>.lora_A.weight` / `.lora_B.weight` (or `transformer.` for a DiT) and
`text_encoder.<module>...` / `text_encoder_2.<module>...`, and the `lora_adapter_metadata` header: one JSON
object holding each component's LoraConfig fields under the component's prefix (`unet.r`,
`unet.lora_alpha`, `unet.rank_pattern`, ...), from which diffusers builds the LoraConfig as written instead
of guessing ranks and alphas from the tensors.

Scaling as in the PEFT export: per component, `r = lora_alpha` = the most common rank and every other
module has rank_pattern = alpha_pattern = its rank, so each module's scale is 1 and the factors carry the
merge exactly. Conv LoRA is stored (r, in_ch, kh, kw) / (n_out, r, 1, 1) as PEFT stores it.

Text encoders: tensor keys keep CLIP's `text_model.` level (what diffusers has always written; it strips
the level itself for transformers >= 5, whose CLIPTextModel has none), while the config's module names
leave it out: PEFT matches a target by dotted suffix, so `encoder.layers.0.self_attn.q_proj` finds the
module under both layouts.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import torch

from analysis.adapters.model import Delta
from analysis.export.layout import export_factors
from analysis.export.peft import rank_config
from analysis.export.sd import denoiser_of, split_component

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE: found without weight_name
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def diffusers_files(modules: Mapping[str, Delta], *, rank: int | None,
                    dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a diffusers LoRA file."""
    denoiser = denoiser_of(list(modules))
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, dict[str, int]] = {}  # component -> module inside it -> rank
    for name, f in export_factors(modules, rank, target="diffusers"):
        component, inner = split_component(name, denoiser=denoiser)
        down, up = f.stored(dtype)
        tensors[f"{component}.{inner}.lora_A.weight"] = down  # (r, n_in) or (r, in_ch, kh, kw)
        tensors[f"{component}.{inner}.lora_B.weight"] = up  # (n_out, r) or (n_out, r, 1, 1)
        ranks.setdefault(component, {})[_config_name(component, inner)] = f.rank
    config: dict[str, Any] = {}
    for component, by_module in sorted(ranks.items()):
        fields = {**rank_config(by_module), "use_dora": False, "lora_dropout": 0.0, "bias": "none",
                  "init_lora_weights": True}
        config |= {f"{component}.{k}": v for k, v in fields.items()}
    return tensors, {METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def _config_name(component: str, inner: str) -> str:
    """The module's name in the LoraConfig: CLIP's optional `text_model.` level left out (suffix match)."""
    return inner.removeprefix("text_model.") if component.startswith("text_encoder") else inner
