"""Turning merged deltas into exportable low-rank factors (shared by the PEFT, diffusers and kohya writers).

Scale convention: the whole update is carried by the factors, dW = up @ down exactly (in float64, before
the cast to the export dtype); each writer then states a file alpha that makes its readers' scaling undo
nothing (PEFT/diffusers: alpha = rank per module; kohya: one uniform alpha with alpha/rank folded into
`up`, see `analysis.export.kohya`). Low-rank results export as they are (exact: `linear`,
`task_arithmetic`, `cat`, `svd`, `slerp`, `knots`, `tsv`, `orthogonal`, row/column isolation); dense
results (TIES, DARE, magnitude pruning, entry isolation) need a rank, which is refused with a clear
message otherwise.

Factors are balanced (||up||_F = ||down||_F, a scalar moved between them; the product is unchanged) so
that neither carries all the magnitude: an fp16 file then keeps both inside its range. `--dtype` picks
the stored precision (`EXPORT_DTYPES`); `analysis.export.fidelity` measures what the cast costs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Mapping

import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.errors import RecipeError
from analysis.merge.ops import truncate

EXPORT_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_DTYPE = "fp32"


def export_dtype(name: str) -> torch.dtype:
    """The torch dtype of `--dtype name`, or one error line listing the valid names."""
    if name not in EXPORT_DTYPES:
        raise RecipeError(f"export dtype '{name}' is not one of {', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[name]


@dataclass(frozen=True)
class ExportFactors:
    """down (r, n_in) and up (n_out, r), float64, with dW = up @ down exactly (scale folded in)."""

    down: torch.Tensor  # (r, n_in)
    up: torch.Tensor  # (n_out, r)
    kernel_shape: tuple[int, ...] | None
    fan_in_fan_out: bool
    kind: str

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def balanced(self) -> "ExportFactors":
        """The same product with ||up||_F = ||down||_F (one scalar moved from one factor to the other)."""
        nu, nd = float(self.up.norm()), float(self.down.norm())
        if nu == 0.0 or nd == 0.0 or not math.isfinite(nu * nd):
            return self
        c = math.sqrt(nu / nd)
        return replace(self, up=self.up / c, down=self.down * c)

    def scaled_up(self, factor: float) -> "ExportFactors":
        """up multiplied by `factor` (a reader's alpha/rank that the file must pre-compensate)."""
        return replace(self, up=self.up * factor)

    def stored(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) cast to `dtype` in the layout PEFT, diffusers and kohya store: (r, n_in) / (n_out, r), or
        for a conv LoRA (r, in_ch, kh, kw) / (n_out, r, 1, 1)."""
        down, up = self.down.to(dtype).contiguous(), self.up.to(dtype).contiguous()
        if self.kind != "conv":
            return down, up
        kh, kw = self.kernel_shape or (1, 1)
        r, n_in = down.shape
        return down.reshape(r, n_in // (kh * kw), kh, kw), up.reshape(up.shape[0], r, 1, 1)


def module_factors(name: str, delta: Delta, rank: int | None, *, target: str) -> ExportFactors:
    """Balanced float64 factors of one module; `rank` re-factors it (best rank-`rank` approximation), skipped
    when the module already is a LoRA of at most that rank (the merge re-factored it: a second SVD of the
    same factors would change nothing but the time)."""
    if delta.kind == "embedding":
        raise RecipeError(f"module {name}: exporting an embedding LoRA to {target} is not supported; "
                          "use --format delta")
    if rank is not None and not (isinstance(delta, LowRankDelta) and delta.rank <= rank):
        delta = truncate(delta, rank)
    if not isinstance(delta, LowRankDelta):
        raise RecipeError(f"module {name}: the merge result is dense (not low rank); pass --rank R to "
                          f"export it to {target}, or use --format delta")
    b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
    return ExportFactors(a, b, delta.kernel_shape, delta.fan_in_fan_out, delta.kind).balanced()


def export_factors(modules: Mapping[str, Delta], rank: int | None, *, target: str) -> Iterator[tuple[str, ExportFactors]]:
    """(module, factors) in module order, one module at a time (float64 copies never all alive at once)."""
    for name in sorted(modules):
        yield name, module_factors(name, modules[name], rank, target=target)
