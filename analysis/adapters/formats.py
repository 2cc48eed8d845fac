"""The adapter formats `load_adapter` recognises: one registry, each format a detector and a parser.

Detection looks at the tensor names only (never file order or shapes) and runs in registration order (the
first detector that accepts the names wins; PEFT-style keys go to PEFT or diffusers by their prefixes). A file that no detector accepts is refused with the list of registered formats, each
with an example of its keys: the error and the registry cannot disagree. An `adapter_config.json` next to the
weights means PEFT whatever the keys (`analysis.adapters.load`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from analysis.adapters.diffusers_format import (
    is_down_up_key,
    is_old_processor_key,
    load_diffusers_down_up,
    load_diffusers_old,
)
from analysis.adapters.kohya_format import has_kohya_prefix, load_kohya
from analysis.adapters.names import has_diffusers_prefix
from analysis.adapters.parsed import Parsed
from analysis.adapters.peft_format import is_peft_factor, load_diffusers_peft, load_peft
from analysis.adapters.safetensors_io import TensorSource


@dataclass(frozen=True)
class AdapterFormat:
    """One recognised format: `name` (recorded as `Adapter.format`), `title` and what its keys look like (for
    the error that lists the formats), `detect(keys)` and `parse(source)`."""

    name: str
    title: str
    looks_like: str
    detect: Callable[[Sequence[str]], bool]
    parse: Callable[[TensorSource], Parsed]


FORMATS: list[AdapterFormat] = []  # in detection order


def register_format(name: str, looks_like: str, detect: Callable[[Sequence[str]], bool],
                    parse: Callable[[TensorSource], Parsed], *, title: str | None = None) -> AdapterFormat:
    fmt = AdapterFormat(name, title or name, looks_like, detect, parse)
    FORMATS.append(fmt)
    return fmt


def detect(keys: Sequence[str]) -> AdapterFormat | None:
    """The first registered format whose detector accepts these tensor names, or None."""
    return next((f for f in FORMATS if f.detect(keys)), None)


def recognised() -> str:
    """Every registered format with an example of its keys, for one error line."""
    seen: dict[str, list[str]] = {}
    for f in FORMATS:
        seen.setdefault(f.title, []).append(f.looks_like)
    return ", ".join(f"{title} ({', '.join(examples)})" for title, examples in seen.items())


def _peft_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if is_peft_factor(k)]


def _peft_style(keys: Sequence[str], *, diffusers: bool) -> bool:
    """PEFT-style factor keys; diffusers' when every one carries a unet./text_encoder./transformer. prefix."""
    peft = _peft_keys(keys)
    return bool(peft) and all(has_diffusers_prefix(k) for k in peft) == diffusers


register_format("peft", "adapter_config.json + adapter_model.safetensors/.bin, keys '<module>.lora_A.weight'",
                lambda keys: _peft_style(keys, diffusers=False), lambda src: load_peft(src, None, None), title="PEFT")
register_format("diffusers", "'unet.<module>.lora_A.weight'", lambda keys: _peft_style(keys, diffusers=True),
                load_diffusers_peft)
register_format("diffusers", "'<module>.lora.down.weight'", lambda keys: any(map(is_down_up_key, keys)),
                load_diffusers_down_up)
register_format("diffusers-old", "'<block>.processor.to_q_lora.down.weight'",
                lambda keys: any(map(is_old_processor_key, keys)), load_diffusers_old)
register_format("kohya", "'lora_unet_<module>.lora_down.weight'; LyCORIS LoHa/LoKr: '.hada_w1_a' / '.lokr_w1'",
                lambda keys: any(map(has_kohya_prefix, keys)), load_kohya, title="kohya / LyCORIS")
