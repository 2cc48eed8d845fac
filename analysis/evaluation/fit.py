"""Do the adapters fit the model, and the deltas applied in memory and restored bit-exactly.

`check_fit` runs before any work: every adapter module must exist in the model with a weight of the right
shape (one line naming the first mismatching module and both shapes); an adapter whose
`base_model_name_or_path` names another model is a warning naming both (the numbers are still measured, on
the model given). `applied_deltas` adds each module's dense update to its weight and always copies the saved
originals back (a copy, not a subtraction, so the restore is bitwise exact in any dtype).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.errors import IncompatibleAdaptersError


def _layout_shape(delta: Delta) -> tuple[int, ...]:
    """The delta's shape in the layout of the base weight ((in, out) for GPT-2 Conv1D and embeddings)."""
    n_out, n_in = delta.shape
    return (n_in, n_out) if (delta.fan_in_fan_out or delta.kind == "embedding") else (n_out, n_in)


def fits(delta: Delta, weight: torch.Tensor) -> bool:
    shape = _layout_shape(delta)
    if tuple(weight.shape) == shape:
        return True
    return weight.dim() > 2 and weight.shape[0] == shape[0] and weight.numel() == shape[0] * shape[1]  # conv


def _weight(modules: Mapping[str, Any], name: str) -> torch.Tensor | None:
    weight = getattr(modules.get(name), "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def _same_model(recorded: str, names: Sequence[str]) -> bool:
    """An adapter's recorded base matches when equal to a name of the model or to its last path part."""
    tail = PurePosixPath(recorded.rstrip("/")).name.lower()
    return any(recorded == n or tail == PurePosixPath(n.rstrip("/")).name.lower() for n in names if n)


def check_fit(model: Any, adapters: Sequence[Adapter], *, model_name: str = "the model",
              aliases: Sequence[str] = ()) -> list[str]:
    """Refuse adapters that do not fit `model` (IncompatibleAdaptersError, one line); return the warnings."""
    modules = dict(model.named_modules())
    for a in adapters:
        for name, delta in a.modules.items():
            weight = _weight(modules, name)
            if weight is None:
                raise IncompatibleAdaptersError(f"{a.name}: module {name} is not in {model_name} (or has no weight)")
            if not fits(delta, weight):
                raise IncompatibleAdaptersError(
                    f"{a.name}: module {name} has shape {_layout_shape(delta)} but {model_name} has "
                    f"{tuple(weight.shape)} there")
    warnings = []
    for a in adapters:
        if a.base_model and not _same_model(a.base_model, [model_name, *aliases]):
            warnings.append(f"{a.name} was recorded for base model {a.base_model}, but is measured on {model_name}")
    return warnings


def target_update(delta: Delta, weight: torch.Tensor, name: str) -> torch.Tensor:
    """The delta in the layout and dtype of `weight`, or IncompatibleAdaptersError naming the module."""
    if not fits(delta, weight):
        raise IncompatibleAdaptersError(
            f"module {name}: delta shape {_layout_shape(delta)} does not fit base weight {tuple(weight.shape)}")
    upd = delta.dense(torch.float64)  # (n_out, n_in)
    if delta.fan_in_fan_out or delta.kind == "embedding":
        upd = upd.T  # the weight is stored (in, out)
    if tuple(upd.shape) != tuple(weight.shape):
        upd = upd.reshape(weight.shape)  # conv: (out, in * kh * kw) -> (out, in, kh, kw)
    return upd.to(device=weight.device, dtype=weight.dtype)


@contextmanager
def applied_deltas(model: Any, deltas: Mapping[str, Delta]) -> Iterator[Any]:
    """Temporarily add each delta to its module's weight; the saved originals are always copied back.

    Every module is checked before any weight is touched, so a bad adapter leaves the model as it was.
    """
    modules = dict(model.named_modules())
    updates: dict[str, torch.Tensor] = {}
    for name, delta in deltas.items():
        weight = _weight(modules, name)
        if weight is None:
            raise IncompatibleAdaptersError(f"module {name}: not found in the base model (or has no weight)")
        updates[name] = target_update(delta, weight, name)
    saved = {name: modules[name].weight.detach().clone() for name in updates}
    try:
        with torch.no_grad():
            for name, upd in updates.items():
                modules[name].weight.add_(upd)
        yield model
    finally:
        with torch.no_grad():
            for name, orig in saved.items():
                modules[name].weight.copy_(orig)
