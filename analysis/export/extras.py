"""Non-LoRA tensors of the inputs (modules_to_save heads, DoRA magnitudes, LoRA biases) in a merge.

They are not updates that a merge method can blend: a classifier head trained for one task is not a
delta. The rule is the simple one that never loses a head silently: carried into the export when
every input holds the same keys with byte-equal tensors (same dtype, shape and bytes, e.g. adapters
that froze a shared head, or one adapter merged with itself), else the merge is refused with one line
naming them, unless the user says drop (`--drop-extras`, recipe `export.extras: drop`). Only PEFT
exports can carry them: their keys are PEFT keys, written back verbatim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from analysis.adapters.model import Adapter
from analysis.adapters.safetensors_io import open_weights
from analysis.errors import RecipeError

EXTRAS_POLICIES = ("carry", "drop")


@dataclass(frozen=True)
class ExtrasPlan:
    """What happens to the inputs' extras: `carried` tensors by key, or the keys `dropped`."""

    policy: str
    carried: dict[str, torch.Tensor] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # key -> kind (modules_to_save, dora_magnitude, ...)
    dropped: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy, "carried": sorted(self.carried), "dropped": list(self.dropped),
                "kinds": dict(sorted(self.kinds.items()))}


def _listing(keys: Sequence[str], most: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(f"'{k}'" for k in keys[:most]) + more


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def read_extras(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The extra tensors of one adapter, read from its weights file (a copy, detached from the mmap)."""
    if not adapter.extras:
        return {}
    src = open_weights(adapter.files[0])
    return {key: src.get(key).clone() for key in sorted(adapter.extras)}


def plan_extras(adapters: Sequence[Adapter], policy: str = "carry", *, export_format: str = "peft") -> ExtrasPlan:
    """Decide carry/drop for the inputs' extras, or raise one `RecipeError` line naming them."""
    if policy not in EXTRAS_POLICIES:
        raise RecipeError(f"extras policy '{policy}' is not one of {', '.join(EXTRAS_POLICIES)}")
    keys = sorted(set().union(*(a.extras for a in adapters))) if adapters else []
    kinds = {k: next(a.extras[k].kind for a in adapters if k in a.extras) for k in keys}
    if not keys:
        return ExtrasPlan(policy)
    if policy == "drop":
        return ExtrasPlan(policy, kinds=kinds, dropped=tuple(keys))
    hint = "pass --drop-extras (recipe export.extras: drop) to merge without them"
    if export_format != "peft":
        raise RecipeError(f"the inputs hold non-LoRA tensors ({_listing(keys)}) that only a PEFT export can carry; "
                          f"{hint}")
    foreign = [a.name for a in adapters if a.format != "peft"]
    if foreign:
        raise RecipeError(f"{foreign[0]}: its non-LoRA tensors ({_listing(keys)}) are not PEFT keys and cannot be "
                          f"carried into a PEFT export; {hint}")
    first = read_extras(adapters[0])
    differ = set(keys) - set(first)
    for a in adapters[1:]:
        other = read_extras(a)
        differ |= set(keys) - set(other)
        differ |= {k for k in first.keys() & other.keys() if not _bytes_equal(first[k], other[k])}
    if differ:
        kind = sorted({kinds[k] for k in differ})
        raise RecipeError(f"non-LoRA tensors differ between the inputs ({', '.join(kind)}: {_listing(differ)}): "
                          f"a merge cannot blend them; {hint}")
    return ExtrasPlan(policy, carried=first, kinds=kinds)


def peft_config_for(plan_kinds: dict[str, str], inputs: Sequence[Adapter]) -> dict[str, Any]:
    """adapter_config.json keys that make PEFT load the carried extras (heads, DoRA, LoRA biases)."""
    from analysis.export.peft import common_value

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
