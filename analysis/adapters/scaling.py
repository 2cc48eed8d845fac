"""The one place where a LoRA's scale is decided.

Every format ends in dW = scale * B @ A, and getting `scale` wrong silently rescales every number the
product shows, so all loaders call `lora_scale` (and only it) with the rank and alpha they resolved:
- PEFT: alpha / r, or alpha / sqrt(r) with `use_rslora`; r and alpha may be overridden per module by
  `rank_pattern` / `alpha_pattern`, resolved with PEFT's own key-matching rule (`pattern_value`).
- kohya / diffusers: per-module `.alpha` tensor, absent -> alpha = rank (scale 1).
- LyCORIS LoHa/LoKr: alpha / dim with the dim LyCORIS itself uses (see `lycoris.py`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from analysis.errors import AdapterFormatError

T = TypeVar("T")


def lora_scale(rank: int, alpha: float | None, *, use_rslora: bool = False) -> float:
    """alpha / rank (alpha / sqrt(rank) for rsLoRA); a missing or zero alpha means alpha = rank.

    The "zero means rank" rule is kohya's and LyCORIS's (`alpha = lora_dim if alpha is None or
    alpha == 0`); PEFT always stores a non-zero lora_alpha so the rule never changes a PEFT scale.
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    a = float(rank) if alpha is None or alpha == 0 else float(alpha)
    return a / math.sqrt(rank) if use_rslora else a / rank


def pattern_value(patterns: Mapping[str, T], module_key: str, default: T) -> T:
    """Value of the first pattern in `patterns` that matches `module_key`, else `default`.

    Same rule as PEFT's `get_pattern_key` (peft/utils/other.py, used by LoraModel._create_and_replace
    for rank_pattern and alpha_pattern): a pattern matches when the regex `(.*\\.)?(<pattern>)$`
    matches the module key from its start, i.e. the pattern covers a dotted suffix of the key; the
    first matching pattern in the dict's order wins. `module_key` is the module's path in the base
    model (`model.layers.0.self_attn.q_proj`, no `base_model.model.` prefix).
    """
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return patterns[pattern]
    return default


@dataclass(frozen=True)
class LoraSettings:
    """The parts of a PEFT LoraConfig that decide rank and scale, validated once."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()

    def rank_alpha(self, module_key: str) -> tuple[int, float]:
        """(r, alpha) PEFT would give this module."""
        r = pattern_value(self.rank_pattern, module_key, self.r)
        alpha = pattern_value(self.alpha_pattern, module_key, self.lora_alpha)
        return int(r), float(alpha)

    def scale(self, module_key: str) -> float:
        r, alpha = self.rank_alpha(module_key)
        return lora_scale(r, alpha, use_rslora=self.use_rslora)


def settings_from_config(config: Mapping[str, Any], source: Path) -> LoraSettings:
    """Validate a PEFT adapter_config (or diffusers lora_adapter_metadata) into `LoraSettings`.

    Refuses non-LoRA PEFT types and r <= 0 with one line naming `source`.
    """
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterFormatError(f"{source}: peft_type {peft_type!r} is not supported (only LORA adapters)")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterFormatError(f"{source}: 'r' must be a positive integer, found {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterFormatError(f"{source}: 'lora_alpha' must be a number, found {alpha!r}")
    rank_pattern = dict(config.get("rank_pattern") or {})
    for key, value in rank_pattern.items():
        if not isinstance(value, int) or value <= 0:
            raise AdapterFormatError(f"{source}: rank_pattern[{key!r}] must be a positive integer, found {value!r}")
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    mts = config.get("modules_to_save") or ()
    return LoraSettings(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(config.get("use_rslora", False)),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        use_dora=bool(config.get("use_dora", False)),
        modules_to_save=tuple(mts) if isinstance(mts, (list, tuple)) else (str(mts),),
    )
