"""The paper's setting at this scale: full fine-tuning of the targeted weights, entry cores frozen by a gradient mask.

CPI-FT (Wang, Liang & Peng 2025) fine-tunes every parameter, takes each task's core as its top-p entries by
|update|, fuses (cores transplanted, the rest blended) and tunes on the task mix with the cores' gradients
masked. Here the trainable object is a dense update P (n_out, n_in) per targeted projection, started at the
entry-isolation merge of the task adapters (the registered `isolation` method, granularity `entries`), and
the forward pass is base(x) + x P^T. A hook multiplies P's gradient by `keep` (0 on the cores), and AdamW
runs with no weight decay, so a masked entry sees a zero gradient, zero moments and a zero step: it stays
bit-identical (tested), which is the paper's mechanism, not a re-projection after the fact.

The result is a dense update; it is exported exactly as a delta file and as a LoRA at a stated rank, whose
fidelity (relative Frobenius error per module) is reported: truncation blurs the very entries that were
frozen, which is why the LoRA arms of `analysis.consolidate.train` use row cores instead.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from analysis.adapters.model import Adapter, Delta, DenseDelta, LowRankDelta
from analysis.consolidate.blocks import _parent
from analysis.errors import IncompatibleAdaptersError

log = logging.getLogger(__name__)


class DenseUpdateLinear(nn.Module):
    """A frozen base Linear plus a trainable dense update P (n_out, n_in) whose gradient is masked by `keep`."""

    def __init__(self, base: nn.Linear, start: torch.Tensor, keep: torch.Tensor | None) -> None:
        super().__init__()
        self.base = base
        self.P = nn.Parameter(start.detach().to(torch.float32).clone())  # (n_out, n_in)
        if keep is not None:
            self.register_buffer("keep", keep.to(torch.float32))  # (n_out, n_in) 0 on frozen entries
            self.P.register_hook(lambda g: g * self.keep)
        else:
            self.keep = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.P.T  # (..., n_out)


def install_dense(model: nn.Module, starts: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
                  ) -> dict[str, DenseUpdateLinear]:
    """Wrap each named Linear; `frozen[m]` (n_out, n_in) bool marks the entries whose gradient is masked."""
    for p in model.parameters():
        p.requires_grad_(False)
    out: dict[str, DenseUpdateLinear] = {}
    for name, start in starts.items():
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear) or tuple(base.weight.shape) != tuple(start.shape):
            raise IncompatibleAdaptersError(f"module {name}: expected a Linear of shape {tuple(start.shape)}")
        keep = (~frozen[name]).to(torch.float32) if name in frozen else None
        parent, child = _parent(model, name)
        wrapped = DenseUpdateLinear(base, start, keep)
        setattr(parent, child, wrapped)
        out[name] = wrapped
    return out


def uninstall_dense(model: nn.Module, installed: Mapping[str, DenseUpdateLinear]) -> None:
    for name, wrapped in installed.items():
        parent, child = _parent(model, name)
        setattr(parent, child, wrapped.base)


def dense_modules(installed: Mapping[str, DenseUpdateLinear]) -> dict[str, Delta]:
    return {m: DenseDelta(W=w.P.detach().clone()) for m, w in installed.items()}


def entry_start(adapters: Sequence[Adapter], p: float, tau: float
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(start dW per module (n_out, n_in) float32, union of the tasks' entry cores per module, merge info).

    The start is the registered `isolation` merge (entries, blend mean: the sample set's measured default);
    the cores are the same ones that merge transplanted (computed once and handed to it)."""
    from analysis.isolation import CoreChoice, CoreSettings, task_cores
    from analysis.merge import merge_adapters
    from analysis.merge.ops import materialize

    cores = task_cores(adapters, granularity="entries", p=p)
    merged = merge_adapters(adapters, "isolation", params={"p": p, "granularity": "entries", "tau": tau,
                                                           "blend": "mean"},
                            cores=CoreChoice(CoreSettings("entries", p), cores))
    starts = {m: materialize(d).dense(torch.float32) for m, d in merged.modules.items()}  # (n_out, n_in)
    frozen = {}
    for m, per in cores.items():
        masks = [c.mask() for c in per.values()]
        frozen[m] = torch.stack(masks).any(dim=0)  # (n_out, n_in)
    groups = merged.info.get("groups")
    info = {"groups": [int(g) for g in groups] if groups is not None else None}
    return starts, frozen, info


def zero_start(adapters: Sequence[Adapter]) -> dict[str, torch.Tensor]:
    shapes = {m: d.shape for a in adapters for m, d in a.modules.items()}
    return {m: torch.zeros(s) for m, s in sorted(shapes.items())}


def lora_export(modules: Mapping[str, Delta], rank: int) -> tuple[dict[str, Delta], dict[str, float]]:
    """Best rank-`rank` LoRA of every dense update and its fidelity: the largest and the energy-weighted
    relative Frobenius error ||dW - dW_r|| / ||dW|| over modules."""
    from analysis.merge.ops import truncate

    out: dict[str, Delta] = {}
    worst, err2, tot2 = 0.0, 0.0, 0.0
    for m, d in sorted(modules.items()):
        low = truncate(d, rank)
        W = d.dense(torch.float64)  # (n_out, n_in)
        e2 = float(((W - low.dense(torch.float64)) ** 2).sum())
        n2 = float((W**2).sum())
        worst = max(worst, (e2 / n2) ** 0.5 if n2 > 0 else 0.0)
        err2, tot2 = err2 + e2, tot2 + n2
        out[m] = LowRankDelta(A=low.A.float(), B=(low.B * low.scale).float(), scale=1.0)
    return out, {"rank": rank, "max_relative_error": worst,
                 "relative_error": (err2 / tot2) ** 0.5 if tot2 > 0 else 0.0}


def frozen_entry_change(trained: Mapping[str, Delta], starts: Mapping[str, torch.Tensor],
                        frozen: Mapping[str, torch.Tensor]) -> float:
    """Largest |trained - start| over the frozen entries (0.0 when the gradient mask held)."""
    worst = 0.0
    for m, mask in frozen.items():
        if bool(mask.any()):
            diff = trained[m].dense(torch.float32)[mask] - starts[m][mask]  # (n_frozen,)
            worst = max(worst, float(diff.abs().max()))
    return worst
