"""Capacity of a layer: how much of its width the adapters occupy, and how much overlap is unavoidable.

A layer of width d holds at most d / r mutually orthogonal rank-r updates. Past that, overlap is
forced by counting alone: with P = sum_i U_i U_i^T (N projectors of rank r),
||P||_F^2 >= tr(P)^2 / rank(P) >= (N r)^2 / d, and ||P||_F^2 = N r + sum_{i != j} ||U_i^T U_j||_F^2,
so the mean normalised overlap mean_{i != j} ||U_i^T U_j||_F^2 / r is at least (N r / d - 1) / (N - 1).
Measured overlap far above this floor is learned structure (tasks that really share directions);
overlap near it is crowding. Tight frames (several orthonormal bases of R^d split into blocks)
attain the floor exactly. With unequal ranks the same bound holds with r the mean rank.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter
from analysis.errors import AtlasError
from analysis.linalg import block_sums, delta_svd, effective_rank

log = logging.getLogger(__name__)

# Singular values of the stacked bases [U_1 .. U_N] at or below this count as no new direction:
# they come from a Gram eigen-decomposition, accurate to about sqrt(machine eps) ~ 1e-8.
UNION_TOL = 1e-6


def capacity_floor(n: int, r: float, d: int) -> float:
    """Smallest possible mean normalised overlap of n rank-r subspaces in R^d: max(0, (n r / d - 1) / (n - 1))."""
    if n < 2 or d <= 0:
        return 0.0
    return max(0.0, (n * r / d - 1.0) / (n - 1.0))


def stacked_basis_stats(bases: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(pair, union_sv) of N orthonormal bases: pair[i, j] = ||U_i^T U_j||_F^2 (N, N) and the singular values of [U_1 .. U_N].

    Both come from the one small Gram C = Ucat^T Ucat (K, K): no d-sized SVD is needed.
    """
    ranks = [int(u.shape[1]) for u in bases]
    u_cat = torch.cat([u.to(torch.float64) for u in bases], dim=1)  # (d, K)
    c = u_cat.T @ u_cat  # (K, K)
    pair = block_sums(c ** 2, ranks).numpy()  # (N, N)
    union_sv = torch.linalg.eigvalsh(c).clamp_min(0.0).sqrt().flip(0).numpy()  # (K,) descending
    return pair, union_sv


def module_capacity(
    module: str, width: int, ranks: Sequence[int], pair: np.ndarray, union_sv: np.ndarray, *, r: int | None = None
) -> dict[str, Any]:
    """One module's capacity numbers from its ranks, pair overlaps ||U_i^T U_j||^2 and stacked-basis spectrum.

    `fits_more` counts the further rank-r updates (r defaults to the largest rank present) that
    would still fit orthogonally to everything the adapters occupy: floor((d - union_rank) / r).
    """
    n = len(ranks)
    ranks = [int(k) for k in ranks]
    mean_r = float(np.mean(ranks)) if n else 0.0
    off = pair.sum() - np.trace(pair)
    measured = float(off / (n * (n - 1) * mean_r)) if n > 1 and mean_r > 0 else 0.0
    union_rank = int((union_sv > UNION_TOL).sum())
    floor = capacity_floor(n, mean_r, width)
    step = max(ranks) if r is None and ranks else r
    fits = max(0, (width - union_rank) // step) if step else None
    return {
        "module": module,
        "width": int(width),
        "n_adapters": n,
        "ranks": ranks,
        "sum_rank": int(sum(ranks)),
        "union_rank": union_rank,
        "union_effective_rank": effective_rank(union_sv),
        "mean_overlap": measured,
        "floor": floor,
        "excess": measured - floor,
        "fits_more": fits,
        "fits_more_rank": step,
    }


def _report_from_table(table: Mapping[str, Any], r: int | None) -> list[dict[str, Any]]:
    rows = []
    for module, mo in table.items():
        ranks = mo.ranks
        k = np.asarray(ranks, dtype=float)
        pair = mo.subspace_similarity * np.minimum(k[:, None], k[None, :])  # (N, N) undo phi's normalisation
        rows.append(module_capacity(module, mo.shape[0], ranks, pair, mo.union_sv, r=r))
    return rows


def _report_from_adapters(adapters: Sequence[Adapter], modules_regex: str | None, r: int | None) -> list[dict[str, Any]]:
    from analysis.overlap import shared_modules  # sibling module; imported here to keep capacity usable alone

    rows = []
    for module in shared_modules(adapters, modules_regex):
        bases = [delta_svd(a.modules[module])[0] for a in adapters]  # N of (d, k_i)
        pair, union_sv = stacked_basis_stats(bases)
        width = adapters[0].modules[module].shape[0]
        rows.append(module_capacity(module, width, [int(u.shape[1]) for u in bases], pair, union_sv, r=r))
    return rows


def capacity_report(
    source: Sequence[Adapter] | Mapping[str, Any], *, modules_regex: str | None = None, r: int | None = None
) -> list[dict[str, Any]]:
    """Per-module capacity rows (output space) from adapters or from an existing overlap table.

    Each row: module, width d, n_adapters, ranks, sum_rank, union_rank, union_effective_rank
    (Roy-Vetterli rank of the stacked bases: K when all directions are orthogonal, r when all
    adapters span the same space), mean_overlap (measured), floor, excess, fits_more.
    """
    if isinstance(source, Mapping):
        rows = _report_from_table(source, r)
        if modules_regex is not None:
            try:
                pattern = re.compile(modules_regex)
            except re.error as exc:
                raise AtlasError(f"modules regex {modules_regex!r} is invalid: {exc}") from None
            rows = [row for row in rows if pattern.search(row["module"])]
        return rows
    return _report_from_adapters(list(source), modules_regex, r)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whole-adapter-set summary: the most crowded module and how many modules sit near their floor."""
    if not rows:
        return {"modules": 0}
    crowded = max(rows, key=lambda row: row["sum_rank"] / max(row["width"], 1))
    return {
        "modules": len(rows),
        "max_occupancy": crowded["sum_rank"] / max(crowded["width"], 1),
        "most_crowded_module": crowded["module"],
        "mean_overlap": float(np.mean([row["mean_overlap"] for row in rows])),
        "mean_floor": float(np.mean([row["floor"] for row in rows])),
        "min_fits_more": min((row["fits_more"] for row in rows if row["fits_more"] is not None), default=None),
    }
