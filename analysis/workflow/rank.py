"""Export rank: the fidelity of a rank-R export at any R from one spectrum, and the automatic rank.

A merge result is re-factored for PEFT/kohya by its best rank-R approximation (Eckart-Young), whose
relative Frobenius error per module is sqrt(sum_{k>R} S_k^2) / ||dW||_F. With the top singular values
up to the cap and ||dW||_F^2 (exact from the factors or the dense tensor), the error at every R <= cap
is a cumulative sum away, so changing the export rank never reruns a merge or a preview.

The automatic rank is the smallest R whose *pooled* relative error over all modules,
sqrt(sum_m tail_m(R)) / sqrt(sum_m ||dW_m||^2) (the number the preview reports as export error), is
at most the target, capped at the summed input rank (an isolation merge of N rank-r adapters has no
reason to be wider than N r); when the cap does not reach the target, the cap is used and the result
says so (`reached: false`). Large dense modules use a randomised range finder for their top values
(`torch.svd_lowrank`): its captured energy is a lower bound, so the reported error is an upper bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.linalg import delta_svd

EXACT_SVD_MAX_WIDTH = 1024  # dense modules narrower than this get an exact svdvals
DEFAULT_TARGET_ERROR = 0.05


@dataclass(frozen=True)
class Spectrum:
    """Top singular values (descending, at most `cap`) and total energy ||dW||_F^2 of every module."""

    top: Mapping[str, np.ndarray]  # module -> (k,)
    total2: Mapping[str, float]
    cap: int

    def module_error(self, module: str, rank: int | None) -> float:
        total = self.total2[module]
        if rank is None or total <= 0.0:
            return 0.0
        kept = float((self.top[module][:rank] ** 2).sum())
        return math.sqrt(max(total - kept, 0.0) / total)

    def error(self, rank: int | None) -> float:
        """Pooled relative Frobenius error of the rank-`rank` export (0 for None: exact)."""
        tot = sum(self.total2.values())
        if rank is None or tot <= 0.0:
            return 0.0
        tail = sum(self.module_error(m, rank) ** 2 * t for m, t in self.total2.items())
        return math.sqrt(tail / tot)

    def worst(self, rank: int | None) -> tuple[str | None, float]:
        """(module, relative error) of the module the rank-`rank` export approximates worst."""
        if rank is None or not self.total2:
            return None, 0.0
        errors = {m: self.module_error(m, rank) for m in self.total2}
        m = max(errors, key=lambda k: errors[k])
        return m, errors[m]

    def smallest_rank(self, target: float) -> tuple[int, bool]:
        """(smallest rank with pooled error <= target, whether it is reached below the cap)."""
        for r in range(1, self.cap + 1):
            if self.error(r) <= target:
                return r, True
        return self.cap, False

    def fidelity(self, rank: int | None) -> dict[str, float | str | None]:
        module, worst = self.worst(rank)
        return {"relative_error": self.error(rank), "worst_module": module, "worst_module_error": worst}


def top_singular_values(delta: Delta, cap: int) -> tuple[np.ndarray, float]:
    """((k,) top singular values, k <= cap, and ||dW||_F^2) of one module."""
    if isinstance(delta, LowRankDelta):
        _, S, _ = delta_svd(delta)  # (k,): exact, from the factors
        return S[:cap].double().numpy(), float((S.double() ** 2).sum())
    W = delta.dense(torch.float32)  # (n_out, n_in)
    total2 = float((W.double() ** 2).sum())
    width = min(W.shape)
    if width <= EXACT_SVD_MAX_WIDTH or cap + 10 >= width:
        S = torch.linalg.svdvals(W)  # (width,)
    else:
        with torch.random.fork_rng():  # seeded: the same merge always picks the same rank
            torch.manual_seed(0)
            _, S, _ = torch.svd_lowrank(W, q=min(cap + 10, width), niter=4)  # (q,)
    return S[:cap].double().numpy(), total2


def spectrum(modules: Mapping[str, Delta], cap: int,
             progress: Callable[[int, int, str], None] | None = None) -> Spectrum:
    """The `Spectrum` of a merge result, module by module (one dense module in memory at a time)."""
    top: dict[str, np.ndarray] = {}
    total2: dict[str, float] = {}
    names = sorted(modules)
    for i, m in enumerate(names):
        top[m], total2[m] = top_singular_values(modules[m], cap)
        if progress is not None:
            progress(i + 1, len(names), m)
    return Spectrum(top=top, total2=total2, cap=max(1, cap))
