"""Write a merged adapter as a kohya-style LoRA safetensors file (what SD UIs load).

Keys: `<kohya name>.lora_down.weight` (r, n_in) or (r, in_ch, kh, kw), `.lora_up.weight` (n_out, r)
or (n_out, r, 1, 1), and `.alpha` = r, so the kohya scale alpha / r is 1 and the factors carry the
merge exactly. Names come from `canonical_to_kohya` (UNet -> lora_unet_, text encoders -> lora_te*_).
"""
from __future__ import annotations

from typing import Mapping

import torch

from analysis.adapters.model import Delta
from analysis.adapters.names import canonical_to_kohya
from analysis.export.layout import export_factors


def kohya_files(modules: Mapping[str, Delta], *, rank: int | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    factors = export_factors(modules, rank, target="kohya")
    tensors: dict[str, torch.Tensor] = {}
    for name, f in factors.items():
        key = canonical_to_kohya(name)
        down, up = f.conv_shapes() if f.kind == "conv" else (f.down, f.up)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(float(f.rank), dtype=torch.float32)  # ()
    return tensors, {}
