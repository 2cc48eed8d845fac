"""Non-LoRA tensors of the inputs (modules_to_save heads, DoRA magnitudes, LoRA biases) in a merge.

They are not updates that a merge method can blend: a classifier head trained for one task is not a
delta. The rule is the simple one that never loses a head silently: carried into the export when
every input holds the same keys with byte-equal tensors (same dtype, shape and bytes, e.g. adapters
that froze a shared head, or one adapter merged with itself), else the export is refused with one line
naming them, unless the user says drop (recipe `export.extras: drop`; each face names its own control).
Only PEFT exports can carry them: their keys are PEFT keys, written back verbatim.

LoRA biases (`lora_bias=True`): PEFT adds `scaling * lora_B.bias` to the layer's output, and the export
writes `lora_alpha = r` (scaling 1). So each input's bias is compared and carried *scaled*: multiplied by
its module's own scale (`delta.scale`, alpha/r or alpha/sqrt(r) with rank/alpha patterns applied, from
`analysis.adapters.scaling`). Two inputs whose scaled biases are identical add the same output offset,
and the export adds that offset once. The bias is carried as a shared offset, not blended: it is not
multiplied by the merge weights. Rule chosen for honesty, not completeness: the merge's dW is a weighted
combination of updates, and for weights summing to 1 (a mean of identical inputs) the written layer then
reproduces each input exactly (tested on PEFT's own layer output); for other weights (a sum, task
arithmetic with lambda != 1) the offset is not scaled with them, which the recipe's `extras: drop` avoids.
Inputs whose scaled biases differ are refused like any other extra.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from analysis.adapters.model import Adapter
from analysis.adapters.peft_format import LORA_BIAS, PEFT_PREFIX
from analysis.adapters.safetensors_io import open_weights
from analysis.errors import RecipeError

EXTRAS_POLICIES = ("carry", "drop")
DROP_HINT = "merge with the extras dropped (recipe export.extras: drop)"


@dataclass(frozen=True)
class ExtrasPlan:
    """What happens to the inputs' extras: `carried` tensors by key, or the keys `dropped`; `refused` is the
    one-line reason this policy cannot be exported (the merge and its preview are still valid)."""

    policy: str
    carried: dict[str, torch.Tensor] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # key -> kind (modules_to_save, dora_magnitude, ...)
    dropped: tuple[str, ...] = ()
    refused: str | None = None

    def summary(self) -> dict[str, Any]:
        out = {"policy": self.policy, "carried": sorted(self.carried), "dropped": list(self.dropped),
               "kinds": dict(sorted(self.kinds.items()))}
        if self.refused is not None:
            out["refused"] = self.refused
        return out

    def require(self) -> "ExtrasPlan":
        """The plan, or its refusal as one `RecipeError` line (called where an export is written)."""
        if self.refused is not None:
            raise RecipeError(self.refused)
        return self


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


def bias_scale(adapter: Adapter, key: str) -> float:
    """PEFT's scaling of the module a `lora_B` bias belongs to (the module's `delta.scale`)."""
    m = LORA_BIAS.match(key.removeprefix(PEFT_PREFIX))
    delta = adapter.modules.get(m["module"]) if m else None
    if delta is None or not hasattr(delta, "scale"):
        raise RecipeError(f"{adapter.name}: LoRA bias '{key}' belongs to no LoRA module of the adapter: "
                          "cannot tell its scaling")
    return float(delta.scale)


def scaled_extras(adapter: Adapter) -> dict[str, torch.Tensor]:
    """`read_extras`, with each LoRA bias multiplied by its module's scale (in float64, back to its dtype):
    the output offset PEFT adds, which an export at scaling 1 must write as is."""
    out = read_extras(adapter)
    for key, tensor in out.items():
        if adapter.extras[key].kind == "lora_bias":
            out[key] = (tensor.double() * bias_scale(adapter, key)).to(tensor.dtype)  # (n_out,)
    return out


def plan_extras(adapters: Sequence[Adapter], policy: str = "carry", *, export_format: str = "peft",
                strict: bool = True) -> ExtrasPlan:
    """Decide carry/drop for the inputs' extras. When they cannot be carried: one `RecipeError` line naming
    them (`strict`), else a plan whose `refused` holds that line (raised by `require` at export time)."""
    try:
        return _plan(adapters, policy, export_format)
    except _Refused as exc:
        if strict:
            raise RecipeError(str(exc)) from None
        keys = sorted(set().union(*(a.extras for a in adapters)))
        kinds = {k: next(a.extras[k].kind for a in adapters if k in a.extras) for k in keys}
        return ExtrasPlan(policy, kinds=kinds, refused=str(exc))


class _Refused(Exception):
    pass


def _plan(adapters: Sequence[Adapter], policy: str, export_format: str) -> ExtrasPlan:
    if policy not in EXTRAS_POLICIES:
        raise RecipeError(f"extras policy '{policy}' is not one of {', '.join(EXTRAS_POLICIES)}")
    keys = sorted(set().union(*(a.extras for a in adapters))) if adapters else []
    kinds = {k: next(a.extras[k].kind for a in adapters if k in a.extras) for k in keys}
    if not keys:
        return ExtrasPlan(policy)
    if policy == "drop":
        return ExtrasPlan(policy, kinds=kinds, dropped=tuple(keys))
    hint = DROP_HINT
    if export_format != "peft":
        raise _Refused(f"the inputs hold non-LoRA tensors ({_listing(keys)}) that only a PEFT export can carry; "
                          f"{hint}")
    foreign = [a.name for a in adapters if a.format != "peft"]
    if foreign:
        raise _Refused(f"{foreign[0]}: its non-LoRA tensors ({_listing(keys)}) are not PEFT keys and cannot be "
                          f"carried into a PEFT export; {hint}")
    first = scaled_extras(adapters[0])  # LoRA biases as the output offsets they add
    differ = set(keys) - set(first)
    for a in adapters[1:]:
        other = scaled_extras(a)
        differ |= set(keys) - set(other)
        differ |= {k for k in first.keys() & other.keys() if not _bytes_equal(first[k], other[k])}
    if differ:
        kind = sorted({kinds[k] for k in differ})
        raise _Refused(f"non-LoRA tensors differ between the inputs ({', '.join(kind)}: {_listing(differ)}): "
                          f"a merge cannot blend them; {hint}")
    return ExtrasPlan(policy, carried=first, kinds=kinds)

