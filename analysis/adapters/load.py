"""`load_adapter`: one entry point that recognises the format of a directory or a weights file.

Recognised, by the tensor names themselves (never by file order or shapes):
- peft           `<module>.lora_A.weight` / `.lora_B.weight` (+ adapter_config.json when present)
- diffusers      the same with `unet.` / `text_encoder.` / `transformer.` prefixes, or `...lora.down.weight`
- diffusers-old  `...attn1.processor.to_q_lora.down.weight`
- kohya          `lora_unet_*` / `lora_te*_*` with `.lora_down.weight` / `.lora_up.weight` / `.alpha`
- lycoris        kohya names with `.hada_*` (LoHa) or `.lokr_*` (LoKr) tensors
Loading reads headers only; tensors stay memory-mapped until used. The one exception is the
optional NaN/Inf scan (`check_finite`), which streams each tensor once to warn about bad values.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from analysis.adapters.diffusers_format import (
    is_down_up_key,
    is_old_processor_key,
    load_diffusers_down_up,
    load_diffusers_old,
)
from analysis.adapters.kohya_format import has_kohya_prefix, load_kohya
from analysis.adapters.model import Adapter
from analysis.adapters.names import has_diffusers_prefix
from analysis.adapters.parsed import Parsed
from analysis.adapters.peft_format import (
    PEFT_PREFIX,
    is_peft_factor,
    load_diffusers_peft,
    load_peft,
    read_peft_config,
)
from analysis.adapters.safetensors_io import TensorSource, nonfinite_counts, open_weights
from analysis.errors import AdapterFormatError

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
RECOGNISED = ("PEFT (adapter_config.json + adapter_model.safetensors/.bin, keys '<module>.lora_A.weight'), "
              "diffusers ('unet.<module>.lora_A.weight', '<module>.lora.down.weight', "
              "'<block>.processor.to_q_lora.down.weight'), kohya ('lora_unet_<module>.lora_down.weight'), "
              "LyCORIS LoHa/LoKr ('lora_unet_<module>.hada_w1_a' / '.lokr_w1')")


def load_adapter(path: str | os.PathLike[str], *, name: str | None = None, check_finite: bool = True) -> Adapter:
    """Read an adapter directory or weights file into the factored `Adapter` model.

    Raises `AdapterFormatError` (one line naming the file, the tensor and the reason) for anything
    that is not a readable adapter. NaN/Inf values are reported in `adapter.warnings`, not raised;
    `check_finite=False` skips that scan and leaves every tensor unread.
    """
    p = Path(path)
    if not p.exists():
        raise AdapterFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        weights, config_path = _resolve_dir(p)
        default_name = p.name
    else:
        weights = p
        sibling = p.parent / CONFIG_NAME
        config_path = sibling if p.name in PEFT_WEIGHTS and sibling.exists() else None
        default_name = p.parent.name if config_path else p.stem
    src = open_weights(weights)
    parsed = _parse(src, config_path)
    if not parsed.modules:
        raise AdapterFormatError(f"{weights}: no LoRA modules found (only {len(parsed.extras)} other tensors)")
    if check_finite:
        for key, n in nonfinite_counts(src, src.keys()).items():
            parsed.warnings.append(f"{weights}: tensor '{key}' has {n} NaN/Inf values")
    for w in parsed.warnings:
        log.warning(w)
    files = [weights] + ([config_path] if config_path else [])
    return Adapter(name=name or default_name, path=p, format=parsed.format, base_model=parsed.base_model,
                   config=parsed.config, modules=dict(sorted(parsed.modules.items())), files=files,
                   extras=parsed.extras, warnings=parsed.warnings)


def _resolve_dir(p: Path) -> tuple[Path, Path | None]:
    """(weights file, adapter_config.json or None) of an adapter directory."""
    config = p / CONFIG_NAME
    peft_weights = [p / w for w in PEFT_WEIGHTS if (p / w).exists()]
    if config.exists():
        if not peft_weights:
            raise AdapterFormatError(f"{p}: has {CONFIG_NAME} but no {' or '.join(PEFT_WEIGHTS)}")
        return peft_weights[0], config  # safetensors preferred over the pickle
    if peft_weights:
        raise AdapterFormatError(f"{config}: missing adapter config next to {peft_weights[0].name}")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for f in files:  # the same weights saved twice (.safetensors and .bin): take the safetensors
        if f.stem not in by_stem or f.suffix == ".safetensors":
            by_stem[f.stem] = f
    if not by_stem:
        raise AdapterFormatError(f"{p}: no adapter files; recognised formats: {RECOGNISED}")
    if len(by_stem) > 1:
        if not any(detect_format(open_weights(f).keys()) != "unknown" for f in by_stem.values()):
            raise AdapterFormatError(f"{p}: no file here is in a recognised adapter format; recognised formats: "
                                     f"{RECOGNISED}")
        names = ", ".join(f.name for f in by_stem.values())
        raise AdapterFormatError(f"{p}: holds several adapters ({names}): pass one file")
    return next(iter(by_stem.values())), None


def detect_format(keys: list[str]) -> str:
    """Format name from the tensor names alone (see module docstring)."""
    peft_keys = [k for k in keys if is_peft_factor(k)]
    if peft_keys:
        if all(has_diffusers_prefix(k) for k in peft_keys):
            return "diffusers"
        return "peft"
    if any(is_down_up_key(k) for k in keys):
        return "diffusers"
    if any(is_old_processor_key(k) for k in keys):
        return "diffusers-old"
    if any(has_kohya_prefix(k) for k in keys):
        return "kohya"
    return "unknown"


def _parse(src: TensorSource, config_path: Path | None) -> Parsed:
    keys = src.keys()
    if config_path is not None:
        config = read_peft_config(config_path)
        return load_peft(src, config, config_path)
    fmt = detect_format(keys)
    if fmt == "peft":
        return load_peft(src, None, None)
    if fmt == "diffusers":
        if any(is_peft_factor(k) for k in keys):
            return load_diffusers_peft(src)
        return load_diffusers_down_up(src)
    if fmt == "diffusers-old":
        return load_diffusers_old(src)
    if fmt == "kohya":
        return load_kohya(src)
    first = ", ".join(repr(k) for k in sorted(keys)[:2]) or "no tensors"
    raise AdapterFormatError(f"{src.path}: not a recognised adapter format (keys like {first}); "
                             f"recognised formats: {RECOGNISED}")


__all__ = ["load_adapter", "detect_format", "PEFT_PREFIX"]
