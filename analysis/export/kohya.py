"""Write a merged adapter as a kohya-style LoRA safetensors file (what A1111/Forge, ComfyUI, sd-scripts and
diffusers' `load_lora_weights` load), computed the same way by every one of them.

Keys: `<kohya name>.lora_down.weight` (r, n_in) or (r, in_ch, kh, kw), `.lora_up.weight` (n_out, r) or
(n_out, r, 1, 1), and `.alpha`. Names come from `canonical_to_kohya` (UNet -> lora_unet_ with diffusers module
names, text encoders -> lora_te_; with a second text encoder (SDXL) lora_te1_ / lora_te2_).

Alpha rule (why one alpha): kohya readers (sd-scripts, A1111/Forge, ComfyUI) apply each module as
up @ down * alpha / rank with that module's own alpha and rank. diffusers converts the file to PEFT and
keeps only the most common alpha: its per-module overrides are looked up under names that never match
the attention modules, so a module whose alpha differs from the most common one silently gets the common
one (x1.5 on `to_out.0` in a 12/8 mixed-rank merge). So every module is written with the SAME alpha
`A` (= the most common module rank, which is also `ss_network_alpha` and `ss_network_dim`), and each
module's up factor carries rank / A: up @ down * A / rank is then exactly the merged dW for every reader,
kohya's per-module formula and diffusers' uniform alpha alike. Modules at the most common rank keep
scale 1 (their factors are the merge's own). The alpha is stored as a float32 scalar in every dtype.

Metadata written (sd-scripts' names): `ss_network_module` (networks.lora), `ss_network_dim`,
`ss_network_alpha`, `ss_network_args` (conv_dim/conv_alpha when conv modules are present), and when the
base family is known (`analysis.export.sd.base_family`): `ss_base_model_version`, `ss_v2`, and ModelSpec
1.0.1 `modelspec.sai_model_spec`, `.architecture`, `.implementation`, `.resolution`, plus `.title` and
`.merged_from` (the inputs' names). Not written because not known from the adapters: `ss_sd_model_name`,
training settings (`ss_*` of a training run), `modelspec.prediction_type` (SD 2.x epsilon vs v),
`modelspec.date` (left out so a replay writes identical bytes).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.adapters.names import canonical_to_kohya
from analysis.export.layout import export_factors
from analysis.export.sd import MODELSPEC, base_family

NETWORK_MODULE = "networks.lora"


def kohya_files(modules: Mapping[str, Delta], *, rank: int | None, inputs: Sequence[Adapter] = (),
                dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a kohya LoRA file with one uniform alpha (see the module docstring)."""
    factors = dict(export_factors(modules, rank, target="kohya"))
    ranks = {name: f.rank for name, f in factors.items()}
    alpha = float(Counter(ranks.values()).most_common(1)[0][0]) if ranks else 1.0
    tensors: dict[str, torch.Tensor] = {}
    two_encoders = has_second_encoder(modules)
    for name in list(factors):
        f = factors.pop(name).scaled_up(ranks[name] / alpha).balanced()  # the reader multiplies by alpha / rank
        key = kohya_key(name, two_encoders)
        down, up = f.stored(dtype)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)  # ()
    return tensors, kohya_metadata(modules, ranks, alpha, inputs)


def has_second_encoder(modules: Mapping[str, Delta]) -> bool:
    return any(name.startswith("text_encoder_2.") for name in modules)


def kohya_key(name: str, two_encoders: bool) -> str:
    """The kohya module name: `canonical_to_kohya`, with SDXL's `lora_te1_` for the first text encoder when a
    second one is present (sd-scripts' SDXL spelling; `lora_te_` is the SD 1.x/2.x one)."""
    key = canonical_to_kohya(name)
    return "lora_te1_" + key.removeprefix("lora_te_") if two_encoders and key.startswith("lora_te_") else key


def kohya_metadata(modules: Mapping[str, Delta], ranks: Mapping[str, int], alpha: float,
                   inputs: Sequence[Adapter]) -> dict[str, str]:
    """sd-scripts' `ss_*` and ModelSpec `modelspec.*` header fields that are known (see the module docstring)."""
    dim = int(alpha)
    meta = {"ss_network_module": NETWORK_MODULE, "ss_network_dim": str(dim), "ss_network_alpha": _num(alpha)}
    conv = [r for name, r in ranks.items() if modules[name].kind == "conv"]
    if conv:
        conv_dim = Counter(conv).most_common(1)[0][0]
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_dim), "conv_alpha": _num(alpha)}, sort_keys=True)
    family = base_family(modules, inputs)
    if family is not None:
        meta["ss_base_model_version"] = family
        meta["ss_v2"] = str(family == "sd_v2")
    if family in MODELSPEC:
        arch, impl, resolution = MODELSPEC[family]
        names = [a.name for a in inputs]
        meta |= {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": arch,
                 "modelspec.implementation": impl, "modelspec.resolution": resolution,
                 "modelspec.title": "adapter-atlas merge" + (f" of {', '.join(names)}" if names else "")}
        if names:
            meta["modelspec.merged_from"] = ", ".join(names)
    return meta


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
