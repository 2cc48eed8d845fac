"""Core-parameter isolation: which parameters each task owns, how much tasks share, how to resolve claims.

Following Wang, Liang & Peng (EMNLP 2025, "Not All Parameters Are Created Equal: Smart Isolation
Boosts Fine-Tuning Performance"): a task's *core region* is the top p fraction of its parameters by
update magnitude (paper default p = 1%), task similarity is the Jaccard index of core regions, and
tasks with Jaccard >= tau (paper default 0.1) form groups (connected components).

Granularities, and why there are three:
- `entries`: top-p entries of |dW| per module, the paper's definition. Needs dW, one module at a time.
- `rows`: top-p output rows by energy ||dW[k, :]||^2 = diag(B (A A^T) B^T), from the factors. A row mask D
  keeps the factorisation, D (B A) = (D B) A, so a row-isolated merge is exactly low rank.
- `columns`: top-p input columns by energy diag(A^T (B^T B) A); A column mask keeps B (A D) exact too.
Cores are chosen per module ("one module at a time"), so every layer contributes p of its own
parameters instead of a few loud layers taking the whole budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.errors import RecipeError

GRANULARITIES = ("entries", "rows", "columns")


def row_energy(delta: Delta) -> torch.Tensor:
    """||dW[k, :]||^2 for every output row k, (n_out,), from the factors when low rank."""
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        return ((b @ (a @ a.T)) * b).sum(dim=1)  # (n_out,)
    return (delta.dense(torch.float64) ** 2).sum(dim=1)  # (n_out,)


def column_energy(delta: Delta) -> torch.Tensor:
    """||dW[:, j]||^2 for every input column j, (n_in,), from the factors when low rank."""
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        return ((a.T @ (b.T @ b)) * a.T).sum(dim=1)  # (n_in,)
    return (delta.dense(torch.float64) ** 2).sum(dim=0)  # (n_in,)


def importance(delta: Delta, granularity: str) -> torch.Tensor:
    """The score cores are ranked by: |dW| (n_out, n_in), row energy (n_out,) or column energy (n_in,)."""
    if granularity == "rows":
        return row_energy(delta)
    if granularity == "columns":
        return column_energy(delta)
    if granularity == "entries":
        return delta.dense(torch.float32).abs()  # (n_out, n_in)
    raise RecipeError(f"isolation granularity '{granularity}' is not one of {', '.join(GRANULARITIES)}")


def top_fraction(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the ceil(p * numel) highest scores (at least one; none when all scores are 0)."""
    flat = scores.reshape(-1).contiguous()
    k = min(flat.numel(), max(1, math.ceil(p * flat.numel())))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    # introselect (numpy argpartition) is O(n), about 3x faster than torch.topk's sort for k << n
    idx = torch.from_numpy(np.argpartition(flat.numpy(), flat.numel() - k)[flat.numel() - k:])  # (k,)
    mask[idx] = flat[idx] > 0
    return mask.reshape(scores.shape)


def core_mask(delta: Delta, granularity: str, p: float) -> torch.Tensor:
    """The task's core region at this module: (n_out, n_in), (n_out,) or (n_in,) booleans."""
    return top_fraction(importance(delta, granularity), p)


@dataclass(frozen=True)
class CoreOverlap:
    """Core sizes and pairwise intersections summed over modules, and their Jaccard index."""

    names: list[str]
    sizes: np.ndarray  # (N,)
    intersections: np.ndarray  # (N, N)
    jaccard: np.ndarray  # (N, N)
    per_module: dict[str, np.ndarray]  # module -> (N, N) Jaccard at that module


Cores = dict[str, dict[int, torch.Tensor]]  # module -> {input index: core mask}


def task_cores(adapters: Sequence[Adapter], *, granularity: str = "entries", p: float = 0.01) -> Cores:
    """Every input's core mask at every module it has (computed once, reused by merge and preview)."""
    modules = sorted(set().union(*(a.modules for a in adapters)))
    return {m: {i: core_mask(a.modules[m], granularity, p) for i, a in enumerate(adapters) if m in a.modules}
            for m in modules}


def core_overlap(adapters: Sequence[Adapter], *, granularity: str = "entries", p: float = 0.01,
                 cores: Cores | None = None) -> CoreOverlap:
    """Jaccard overlap of the tasks' core regions, pooled over the modules they share.

    # cores per module; # intersections by boolean products; # Jaccard = |C_i & C_j| / |C_i | C_j|."""
    n = len(adapters)
    sizes = np.zeros(n)
    inter = np.zeros((n, n))
    per_module: dict[str, np.ndarray] = {}
    modules = sorted(set().union(*(a.modules for a in adapters)))
    for module in modules:
        masks_at = cores[module] if cores is not None else {
            i: core_mask(a.modules[module], granularity, p) for i, a in enumerate(adapters) if module in a.modules}
        present = sorted(masks_at)
        masks = torch.stack([masks_at[i].reshape(-1) for i in present]).to(torch.float32)  # (n_present, P)
        counts = (masks @ masks.T).double().numpy()  # (n_present, n_present)
        local = np.zeros((n, n))
        for a_i, i in enumerate(present):
            sizes[i] += counts[a_i, a_i]
            for a_j, j in enumerate(present):
                inter[i, j] += counts[a_i, a_j]
                local[i, j] = counts[a_i, a_j]
        d = np.diag(local)
        union = d[:, None] + d[None, :] - local
        per_module[module] = np.divide(local, union, out=np.zeros_like(local), where=union > 0)
    union = sizes[:, None] + sizes[None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return CoreOverlap([a.name for a in adapters], sizes, inter, jac, per_module)


def task_groups(jaccard: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """Group labels (N,): connected components of the graph 'Jaccard >= tau' (the paper's grouping)."""
    from analysis.clustering import connected_components

    return np.asarray(connected_components(jaccard, tau))


def parse_groups(text: str, n: int) -> np.ndarray | None:
    """'0,0,1' -> array([0, 0, 1]); '' -> None (derive groups from Jaccard instead)."""
    if not text.strip():
        return None
    parts = [t.strip() for t in text.split(",")]
    if len(parts) != n:
        raise RecipeError(f"isolation parameter 'groups': {len(parts)} labels given for {n} adapters")
    index: dict[str, int] = {}
    return np.array([index.setdefault(t, len(index)) for t in parts])


@dataclass(frozen=True)
class ClaimStats:
    """How the positions (entries, rows or columns) of one module were assigned."""

    positions: int
    sole: int  # claimed by exactly one core: transplanted
    shared_in_group: int  # claimed by several cores of one group: the group's mean
    conflicts: int  # claimed by cores of different groups: resolved by the conflict policy
    blended: int  # claimed by no core: blended


def coefficient_maps(masks: torch.Tensor, scores: torch.Tensor, groups: Sequence[int], blend: torch.Tensor,
                     policy: str) -> tuple[torch.Tensor, ClaimStats]:
    """Per-task coefficient maps M (N, *shape): the merged update is sum_i M_i * dW_i (elementwise,
    row-wise or column-wise).

    masks (N, *shape) bool: each task's core; scores (N, *shape): its importance there;
    blend (N,): coefficients for unclaimed positions (mean or SLERP). Policy for conflicts between
    groups: 'magnitude' (the larger |dW| / energy wins outright: the parameter stays one task's, which
    is the point of isolation) or 'mean' (average of the claimants)."""
    N = masks.shape[0]
    m = masks.to(torch.float32)  # (N, *shape)
    claims = m.sum(dim=0)  # (*shape)
    labels = torch.as_tensor(list(groups))
    groups_claiming = sum((m[labels == g].sum(dim=0) > 0).to(torch.float32) for g in labels.unique())  # (*shape)
    free = claims == 0
    sole = claims == 1
    conflict = groups_claiming >= 2
    shared = (claims >= 2) & ~conflict
    view = (N,) + (1,) * (masks.dim() - 1)
    # blend: positions no core claims
    M = blend.to(torch.float32).reshape(view) * free  # (N, *shape)
    # transplant: positions one core claims
    M = M + m * sole
    # group mean: positions several cores of one group claim
    M = M + m * shared / claims.clamp(min=1)
    # resolve conflicts between groups
    if policy == "mean":
        M = M + m * conflict / claims.clamp(min=1)
    else:
        # argmax only over the (few) conflicting positions: a full (N, ...) argmax is the slow part
        where = conflict.nonzero(as_tuple=True)
        claimed = torch.where(masks[(slice(None), *where)], scores[(slice(None), *where)].to(torch.float32),
                              torch.tensor(-1.0))  # (N, n_conflicts)
        winner = torch.argmax(claimed, dim=0)  # (n_conflicts,)
        M[(winner, *where)] = 1.0
    stats = ClaimStats(int(claims.numel()), int(sole.sum()), int(shared.sum()), int(conflict.sum()), int(free.sum()))
    return M, stats
