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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from analysis.adapters.patterns import PatternTable
from analysis.adapters.safe_text import short_repr as _short
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
    model (`model.layers.0.self_attn.q_proj`, no `base_model.model.` prefix). Evaluated in bounded
    time (literal comparison or RE2, see `patterns.py`), never with Python's backtracking matcher.
    """
    return PatternTable(patterns).lookup(module_key, default)


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
    source: str = "config"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ranks", PatternTable(self.rank_pattern, field="rank_pattern", source=self.source))
        object.__setattr__(self, "_alphas", PatternTable(self.alpha_pattern, field="alpha_pattern",
                                                         source=self.source))

    def rank_alpha(self, module_key: str) -> tuple[int, float]:
        """(r, alpha) PEFT would give this module."""
        r = self._ranks.lookup(module_key, self.r)  # type: ignore[attr-defined]
        alpha = self._alphas.lookup(module_key, self.lora_alpha)  # type: ignore[attr-defined]
        return int(r), float(alpha)

    def scale(self, module_key: str) -> float:
        r, alpha = self.rank_alpha(module_key)
        return lora_scale(r, alpha, use_rslora=self.use_rslora)


#: Largest rank accepted from a config: far above any real LoRA, small enough that alpha / r is a float.
MAX_RANK = 1 << 31


def _rank(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_RANK:
        raise AdapterFormatError(f"{where} must be a positive integer up to 2^31, found {_short(value)}")
    return value


def _finite(value: object, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise AdapterFormatError(f"{where} must be a number, found {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise AdapterFormatError(f"{where} must be a finite number, found {_short(value)}")
    return number


def _flag(config: Mapping[str, Any], key: str, where: str) -> bool:
    value = config.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise AdapterFormatError(f"{where}: '{key}' must be true or false, found {_short(value)}")
    return value


def _mapping(config: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AdapterFormatError(f"{where}: '{key}' must be a JSON object mapping module-name patterns to "
                                 f"values, found a {type(value).__name__} {_short(value)}")
    return value


def _modules_to_save(config: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = config.get("modules_to_save")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AdapterFormatError(f"{where}: 'modules_to_save' must be a list of module names, found {_short(value)}")
    return tuple(value)


def settings_from_config(config: Mapping[str, Any], source: Path) -> LoraSettings:
    """Validate a PEFT adapter_config (or diffusers lora_adapter_metadata) into `LoraSettings`.

    Every field that decides a scale is checked here, once, with one line naming `source` and the
    field: non-LoRA PEFT types, r that is not a positive integer, alpha that is not a finite number,
    patterns that are not a mapping, invalid or non-linear-time regexes, flags that are not booleans.
    """
    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise AdapterFormatError(f"{source}: peft_type {_short(peft_type)} is not supported (only LORA adapters)")
    r = _rank(config.get("r"), f"{source}: 'r'")
    alpha = _finite(config.get("lora_alpha", r), f"{source}: 'lora_alpha'")
    rank_pattern = {k: _rank(v, f"{source}: rank_pattern[{_short(k)}]")
                    for k, v in _mapping(config, "rank_pattern", str(source)).items()}
    alpha_pattern = {k: _finite(v, f"{source}: alpha_pattern[{_short(k)}]")
                     for k, v in _mapping(config, "alpha_pattern", str(source)).items()}
    return LoraSettings(
        r=r,
        lora_alpha=alpha,
        use_rslora=_flag(config, "use_rslora", str(source)),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=_flag(config, "fan_in_fan_out", str(source)),
        use_dora=_flag(config, "use_dora", str(source)),
        modules_to_save=_modules_to_save(config, str(source)),
        source=str(source),
    )

