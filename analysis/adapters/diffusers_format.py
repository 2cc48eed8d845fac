"""diffusers' own LoRA layouts from before it adopted PEFT.

- `unet.<module>.lora.down.weight` / `.lora.up.weight` (LoRACompatibleLinear era, e.g. the
  `pytorch_lora_weights.safetensors` written by train_dreambooth_lora / train_text_to_image_lora);
- the attention-processor layout `<block>.attn1.processor.to_q_lora.down.weight` (format
  "diffusers-old"), where `to_out_lora` patches `to_out.0`.
Neither stores an alpha unless a `<module>.alpha` tensor was added by a converter, so the scale is
alpha / rank with alpha = rank, i.e. 1.
"""
from __future__ import annotations

import math
import re

from analysis.adapters.lowrank import add_half, complete_pairs, make_lowrank, pair_rank
from analysis.adapters.names import OLD_PROCESSOR_KEY, diffusers_canonical, old_processor_canonical
from analysis.adapters.parsed import Parsed
from analysis.adapters.safetensors_io import TensorSource
from analysis.adapters.scaling import lora_scale
from analysis.errors import AdapterFormatError

LORA_DOWN_UP = re.compile(r"^(?P<module>.+)\.lora\.(?P<which>down|up)\.weight$")


def is_down_up_key(key: str) -> bool:
    return bool(LORA_DOWN_UP.match(key))


def is_old_processor_key(key: str) -> bool:
    return bool(OLD_PROCESSOR_KEY.match(key))


def _alpha(src: TensorSource, key: str | None) -> float | None:
    """A converter-added `.alpha` scalar, read now because the scale must be known at load."""
    if key is None or key not in src.keys():
        return None
    t = src.get(key)
    if t.numel() != 1:
        raise AdapterFormatError(f"{src.path}: tensor '{key}': alpha must be a scalar, found shape {list(t.shape)}")
    value = float(t.reshape(()).item())
    if not math.isfinite(value):
        raise AdapterFormatError(f"{src.path}: tensor '{key}': alpha is {value}, expected a finite number")
    return value


def load_diffusers_down_up(src: TensorSource) -> Parsed:
    """`...lora.down.weight` / `...lora.up.weight` pairs (format "diffusers")."""
    parsed = Parsed(format="diffusers")
    halves: dict[str, dict[str, str]] = {}
    alphas: set[str] = set()
    for key in src.keys():
        m = LORA_DOWN_UP.match(key)
        if m:
            add_half(src.path, halves, m["module"], m["which"], key)
        elif key.endswith(".alpha"):
            alphas.add(key)
        else:
            parsed.add_extra(src, key, "other")
    for module, (down, up) in complete_pairs(src.path, halves, ("down", "up")).items():
        rank = pair_rank(src, down, up)
        alpha_key = f"{module}.alpha" if f"{module}.alpha" in alphas else None
        _store(parsed, src, diffusers_canonical(module), down, up, lora_scale(rank, _alpha(src, alpha_key)))
    for key in alphas - {f"{m}.alpha" for m in halves}:
        parsed.add_extra(src, key, "other")
    parsed.config = {"metadata": dict(src.metadata)}
    return parsed


def load_diffusers_old(src: TensorSource) -> Parsed:
    """Attention-processor keys (format "diffusers-old"): scale 1, `to_out` -> `to_out.0`."""
    parsed = Parsed(format="diffusers-old")
    halves: dict[str, dict[str, str]] = {}
    for key in src.keys():
        m = OLD_PROCESSOR_KEY.match(key)
        if m:
            add_half(src.path, halves, old_processor_canonical(m["module"], m["proj"]), m["which"], key)
        else:
            parsed.add_extra(src, key, "other")
    for name, (down, up) in complete_pairs(src.path, halves, ("down", "up")).items():
        rank = pair_rank(src, down, up)
        _store(parsed, src, name, down, up, lora_scale(rank, None))
    parsed.config = {"metadata": dict(src.metadata)}
    return parsed


def _store(parsed: Parsed, src: TensorSource, name: str, down: str, up: str, scale: float) -> None:
    parsed.put_module(src.path, name, down, make_lowrank(src, down, up, scale))
