"""The trainable update of every target module as a sum of factored blocks, some row-masked, some frozen.

    dW = sum_b s_b (K_b * B_b) A_b        K_b = 1 - D (rows outside the cores) for masked blocks, else 1

Each block is a LoRA-shaped pair (B_b (n_out, r_b), A_b (r_b, n_in)). A row mask multiplies B in the
forward pass, so masked rows contribute exact zeros and their gradients are exactly zero: nothing in a
core row can move, whatever the optimiser does. Concatenating the blocks, [s_b K_b B_b] (n_out, sum r_b)
times [A_b] (sum r_b, n_in), is the exported LoRA, so the adapter PEFT loads is the trained update
exactly (no re-factoring, no fidelity loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from analysis.adapters.model import LowRankDelta
from analysis.errors import IncompatibleAdaptersError


@dataclass(frozen=True)
class BlockSpec:
    """One block's starting factors and role; `keep` (n_out,) float 0/1 multiplies B's rows (None = all rows)."""

    name: str
    B: torch.Tensor  # (n_out, r)
    A: torch.Tensor  # (r, n_in)
    trainable: bool
    scale: float = 1.0
    keep: torch.Tensor | None = None  # (n_out,)


class BlockLinear(nn.Module):
    """A frozen base Linear plus a sum of factored blocks (see the module docstring)."""

    def __init__(self, base: nn.Linear, specs: list[BlockSpec]) -> None:
        super().__init__()
        self.base = base
        self.names = [s.name for s in specs]
        self.scales = [float(s.scale) for s in specs]
        self.Bs = nn.ParameterList()
        self.As = nn.ParameterList()
        for i, s in enumerate(specs):
            self.Bs.append(nn.Parameter(s.B.detach().to(torch.float32).clone(), requires_grad=s.trainable))
            self.As.append(nn.Parameter(s.A.detach().to(torch.float32).clone(), requires_grad=s.trainable))
            keep = s.keep if s.keep is not None else torch.ones(s.B.shape[0])
            self.register_buffer(f"keep{i}", keep.to(torch.float32).reshape(-1, 1))  # (n_out, 1)

    def keep(self, i: int) -> torch.Tensor:
        return getattr(self, f"keep{i}")  # (n_out, 1)

    def effective_B(self, i: int) -> torch.Tensor:
        return self.Bs[i] * self.keep(i) * self.scales[i]  # (n_out, r_i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., n_out)
        for i in range(len(self.Bs)):
            y = y + (x @ self.As[i].T) @ self.effective_B(i).T  # (..., r_i) -> (..., n_out)
        return y

    @torch.no_grad()
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B (n_out, R), A (R, n_in)) of the whole update, scale and masks folded in: dW = B @ A."""
        B = torch.cat([self.effective_B(i) for i in range(len(self.Bs))], dim=1)  # (n_out, R)
        A = torch.cat(list(self.As), dim=0)  # (R, n_in)
        return B.detach().clone(), A.detach().clone()


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def install(model: nn.Module, specs: Mapping[str, list[BlockSpec]]) -> dict[str, BlockLinear]:
    """Replace each named Linear by a BlockLinear around it; every base parameter is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    installed: dict[str, BlockLinear] = {}
    for name, blocks in specs.items():
        try:
            base = model.get_submodule(name)
        except AttributeError:
            raise IncompatibleAdaptersError(f"module {name}: not found in the base model") from None
        if not isinstance(base, nn.Linear):
            raise IncompatibleAdaptersError(f"module {name}: expected a Linear layer, got {type(base).__name__}")
        for b in blocks:
            if tuple(b.B.shape[:1]) + tuple(b.A.shape[1:]) != (base.out_features, base.in_features):
                raise IncompatibleAdaptersError(
                    f"module {name}: block '{b.name}' is {tuple(b.B.shape)} x {tuple(b.A.shape)}, base weight is "
                    f"{tuple(base.weight.shape)}")
        parent, child = _parent(model, name)
        wrapped = BlockLinear(base, blocks)
        setattr(parent, child, wrapped)
        installed[name] = wrapped
    return installed


def uninstall(model: nn.Module, installed: Mapping[str, BlockLinear]) -> None:
    """Put the original Linear layers back (the base weights were never touched)."""
    for name, wrapped in installed.items():
        parent, child = _parent(model, name)
        setattr(parent, child, wrapped.base)


def trained_modules(installed: Mapping[str, BlockLinear]) -> dict[str, LowRankDelta]:
    """The trained update of every module as an exact LowRankDelta (scale 1, everything folded in)."""
    out: dict[str, LowRankDelta] = {}
    for name, wrapped in installed.items():
        B, A = wrapped.factors()  # (n_out, R), (R, n_in)
        out[name] = LowRankDelta(A=A, B=B, scale=1.0)
    return out


def trainable_parameters(installed: Mapping[str, BlockLinear]) -> list[nn.Parameter]:
    return [p for w in installed.values() for p in w.parameters() if p.requires_grad]


def block_snapshot(installed: Mapping[str, BlockLinear], block: str) -> dict[str, tuple[Any, Any]]:
    """{module: (effective B, A)} of one named block, cloned (for the frozen-core checks)."""
    out = {}
    for name, w in installed.items():
        if block in w.names:
            i = w.names.index(block)
            out[name] = (w.effective_B(i).detach().clone(), w.As[i].detach().clone())
    return out
