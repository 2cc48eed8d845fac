"""Export rank: the fidelity of a rank-R export at any R from one spectrum, and the automatic rank.

A merge result is re-factored for PEFT/kohya by its best rank-R approximation (Eckart-Young), whose
relative Frobenius error per module is sqrt(sum_{k>R} S_k^2) / ||dW||_F. With the top singular values
up to the cap and ||dW||_F^2 (exact from the factors or the dense tensor), the error at every R <= cap
is a cumulative sum away, so changing the export rank never reruns a merge or a preview.

The automatic rank is the smallest R whose *pooled* relative error over all modules,
sqrt(sum_m tail_m(R)) / sqrt(sum_m ||dW_m||^2) (the number the preview reports as export error), is
at most the target, capped at the summed input rank (an isolation merge of N rank-r adapters has no
reason to be wider than N r); when the cap does not reach the target, the cap is used and the result
says so (`reached: false`). Dense results are re-factored at the cap while they are merged
(`merge_adapters(rank=cap)`, never a full SVD of a large dense update); the spectra it keeps give every
smaller rank, and truncating the rank-cap factors again at R is the rank-R answer (Eckart-Young nests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.errors import RecipeError
from analysis.linalg import singular_values
from analysis.merge.ops import ModuleSpectrum

DEFAULT_TARGET_ERROR = 0.05


def check_export_rank(adapters: Sequence[Adapter], rank: int | None, what: str = "export rank") -> None:
    """Refuse (one RecipeError line, before any merge) an export rank wider than every module.

    A rank-R factorisation of an (n_out, n_in) module holds nothing beyond min(n_out, n_in), so a rank
    above the widest module's width only asks for memory (a rank of 10^9 once grew past 6.9 GB)."""
    if rank is None:
        return
    if int(rank) < 1:
        raise RecipeError(f"{what} {rank}: expected a positive integer")
    width, name, shape = 0, "", (0, 0)
    for adapter in adapters:
        for module, delta in adapter.modules.items():
            if min(delta.shape) > width:
                width, name, shape = min(delta.shape), module, delta.shape
    if width and int(rank) > width:
        raise RecipeError(f"{what} {rank} is wider than every module: the widest, {name} "
                          f"({shape[0]} x {shape[1]}), has width {width}; choose a rank from 1 to {width}")


@dataclass(frozen=True)
class Spectrum:
    """Per module: top singular values (descending, at least `cap` when the module has that many) and the
    exact ||dW||_F^2 (`analysis.merge.ops.ModuleSpectrum`, as the merge and the preview keep them)."""

    modules: Mapping[str, ModuleSpectrum]
    cap: int

    def error(self, rank: int | None) -> float:
        """Pooled relative Frobenius error of the rank-`rank` export (0 for None: exact)."""
        if rank is None:
            return 0.0
        curve = self._curve(max(int(rank), 0))
        return float(curve[min(max(int(rank), 0), curve.size - 1)])

    def _curve(self, upto: int) -> np.ndarray:
        """(K + 1,) pooled relative error at ranks 0..K, K >= upto: one cumulative sum per module."""
        cached = self.__dict__.get("_curve_cache")
        if cached is not None and cached.size > upto:
            return cached
        K = max(upto, self.cap, max((int(s.values.numel()) for s in self.modules.values()), default=0))
        tot = sum(s.norm2 for s in self.modules.values())
        tail = np.zeros(K + 1)
        for s in self.modules.values():
            kept = np.zeros(K + 1)
            sq = np.cumsum(s.values.double().numpy() ** 2)[:K]  # (min(k, K),)
            kept[1:sq.size + 1] = sq
            kept[sq.size + 1:] = sq[-1] if sq.size else 0.0
            tail += np.maximum(s.norm2 - kept, 0.0)
        curve = np.sqrt(tail / tot) if tot > 0.0 else np.zeros(K + 1)
        object.__setattr__(self, "_curve_cache", curve)
        return curve

    def worst(self, rank: int | None) -> tuple[str | None, float]:
        """(module, relative error) of the module the rank-`rank` export approximates worst."""
        if rank is None or not self.modules:
            return None, 0.0
        errors = {m: s.relative_error(rank) for m, s in self.modules.items()}
        m = max(errors, key=lambda k: errors[k])
        return m, errors[m]

    def smallest_rank(self, target: float) -> tuple[int, bool]:
        """(smallest rank with pooled error <= target, whether it is reached within the cap)."""
        curve = self._curve(self.cap)[1:self.cap + 1]  # ranks 1..cap
        hit = np.flatnonzero(curve <= target)
        return (int(hit[0]) + 1, True) if hit.size else (self.cap, False)

    def fidelity(self, rank: int | None) -> dict[str, float | str | None]:
        module, worst = self.worst(rank)
        return {"relative_error": self.error(rank), "worst_module": module, "worst_module_error": worst}


def module_spectrum(delta: Delta, cap: int) -> ModuleSpectrum:
    """The spectrum of one module: exact from the factors when low rank, else the rank-`cap` route of
    `analysis.merge.ops.truncate_with_spectrum` (randomised with a convergence check, exact when small)."""
    if isinstance(delta, LowRankDelta):
        S = singular_values(delta)  # (k,): exact, factored
        return ModuleSpectrum(S, float((S**2).sum()), True, "exact")
    from analysis.merge.ops import truncate_with_spectrum

    return truncate_with_spectrum(delta, cap)[1]


def spectrum(modules: Mapping[str, Delta], cap: int,
             progress: Callable[[int, int, str], None] | None = None) -> Spectrum:
    """The `Spectrum` of a merge result, module by module (one dense module in memory at a time)."""
    out: dict[str, ModuleSpectrum] = {}
    names = sorted(modules)
    for i, m in enumerate(names):
        out[m] = module_spectrum(modules[m], cap)
        if progress is not None:
            progress(i + 1, len(names), m)
    return Spectrum(out, max(1, cap))
