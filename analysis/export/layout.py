"""Turning merged deltas into exportable low-rank factors (shared by the PEFT and kohya writers).

Scale convention of every export: the whole scale is folded into the factors and the file's alpha
equals its rank, so the loader's scaling alpha / r is exactly 1 and nothing depends on rsLoRA or
alpha conventions. Low-rank results export as they are (exact: `linear`, `task_arithmetic`, `cat`,
`svd`, `slerp`, `knots`, `tsv`, `orthogonal`, row/column isolation); dense results (TIES, DARE,
magnitude pruning, entry isolation) need a rank, which is refused with a clear message otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.errors import RecipeError
from analysis.merge.ops import truncate

EXPORT_DTYPE = torch.float32


@dataclass(frozen=True)
class ExportFactors:
    """down (r, n_in) and up (n_out, r) with dW = up @ down exactly (scale folded in)."""

    down: torch.Tensor  # (r, n_in)
    up: torch.Tensor  # (n_out, r)
    kernel_shape: tuple[int, ...] | None
    fan_in_fan_out: bool
    kind: str

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def conv_shapes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down (r, in_ch, kh, kw), up (n_out, r, 1, 1)) for a conv LoRA, the layout PEFT and kohya store."""
        kh, kw = self.kernel_shape or (1, 1)
        r, n_in = self.down.shape
        return self.down.reshape(r, n_in // (kh * kw), kh, kw), self.up.reshape(self.up.shape[0], r, 1, 1)


def export_factors(modules: Mapping[str, Delta], rank: int | None, *, target: str) -> dict[str, ExportFactors]:
    """Per module factors for a LoRA file; `rank` re-factors every module (best rank-`rank` approximation)."""
    out: dict[str, ExportFactors] = {}
    for name, delta in sorted(modules.items()):
        if delta.kind == "embedding":
            raise RecipeError(f"module {name}: exporting an embedding LoRA to {target} is not supported; "
                              "use --format delta")
        if rank is not None:
            delta = truncate(delta, rank)
        if not isinstance(delta, LowRankDelta):
            raise RecipeError(f"module {name}: the merge result is dense (not low rank); pass --rank R to "
                              f"export it to {target}, or use --format delta")
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        out[name] = ExportFactors(a.to(EXPORT_DTYPE).contiguous(), b.to(EXPORT_DTYPE).contiguous(),
                                  delta.kernel_shape, delta.fan_in_fan_out, delta.kind)
    return out
