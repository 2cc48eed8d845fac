"""Who claims which positions of one module, and what the merge puts there (the merge side of isolation).

`analysis.isolation` chooses the cores and measures their overlap (`ClaimRuns`: the N sorted cores of a module
merged once, K entries for U distinct positions). From those runs, in O(total core size), without (N, U) tables:
- the merged value at each claimed position: the sole claimant's value where one core claims it (most
  positions), the coefficient maps (`coefficient_maps`: transplant, group mean, conflict policy) on the few
  shared ones;
- per task: its core size, its positions another contributing task also claims (conflicts), its
  positions whose merged value stays within tol of its own (core kept);
- groups of tasks (connected components of core Jaccard >= tau, or the user's labels).
`gather_claims` builds the (N, U) member/value tables from the same runs for callers that want them; on a
4096 x 4096 module with four 1% cores those tables are 2.7M cells, the runs 670k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from analysis.clustering import connected_components
from analysis.errors import RecipeError
from analysis.isolation import ClaimRuns, Core, claim_runs


def shared_tables(runs: ClaimRuns, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(member (N, S) bool, value (N, S) float32) at the given positions (indices into `runs.positions`)."""
    where = np.full(runs.positions.size, -1, dtype=np.int64)
    where[slots] = np.arange(slots.size)
    col = where[runs.slot]  # (K,) column of each entry, -1 when its position is not asked
    pick = np.flatnonzero(col >= 0)
    member = np.zeros((runs.n, slots.size), dtype=bool)
    member[runs.owner[pick], col[pick]] = True
    value = np.zeros((runs.n, slots.size), dtype=np.float32)
    if runs.value is not None:
        value[runs.owner[pick], col[pick]] = runs.value[pick]
    return torch.from_numpy(member), torch.from_numpy(value)


def merged_values(runs: ClaimRuns, groups: Sequence[int], policy: str) -> tuple[torch.Tensor, int, int, int]:
    """(value at every claimed position (U,) float32, sole, shared in a group, conflicts).

    A position one core claims takes that core's value (copied exactly); the positions several cores
    claim go through `coefficient_maps` (group mean, conflict policy)."""
    assert runs.value is not None, "merged values need cores that carry their values"
    target = runs.value[runs.starts].copy()  # (U,) exact where one core claims
    multi = np.flatnonzero(runs.count >= 2)  # (n2,)
    shared = conflicts = 0
    if multi.size:
        member, value = shared_tables(runs, multi)  # (N, n2)
        zero = torch.zeros(runs.n, dtype=torch.float64)  # no free position among claimed ones
        M, stats = coefficient_maps(member, value.abs(), groups, zero, policy)  # (N, n2)
        target[multi] = (M * value).sum(dim=0).numpy()
        shared, conflicts = stats.shared_in_group, stats.conflicts
    return torch.from_numpy(target), int(np.count_nonzero(runs.count == 1)), shared, conflicts


def task_counts(runs: ClaimRuns, live: np.ndarray, merged_at: np.ndarray | None,
                tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per core: (size, conflicts, kept), each (N,) int64.

    conflicts: its positions claimed by at least two *live* cores (weight > 0); kept: its positions where
    |merged - own| <= tol |own| (needs `merged_at` (U,) and the cores' values, else None)."""
    sizes = np.bincount(runs.owner, minlength=runs.n)
    live_count = np.bincount(runs.slot[live[runs.owner]], minlength=runs.positions.size)  # (U,)
    conflicts = np.bincount(runs.owner[live_count[runs.slot] > 1], minlength=runs.n)
    kept = None
    if merged_at is not None and runs.value is not None:
        own = runs.value  # (K,)
        ok = np.abs(merged_at[runs.slot] - own) <= tol * np.abs(own)  # (K,)
        kept = np.bincount(runs.owner[ok], minlength=runs.n)
    return sizes, conflicts, kept


@dataclass(frozen=True)
class Claims:
    """Who claims what at one module: the union of the given cores, and each task's value there."""

    positions: torch.Tensor  # (U,) int64 sorted flat positions claimed by at least one core
    member: torch.Tensor  # (N, U) bool: task i's core contains the position
    value: torch.Tensor  # (N, U) float32: task i's core value there (0 where not a member)


def gather_claims(cores: Sequence[Core]) -> Claims:
    """Union of the cores, membership and values as (N, U) tables, in O(sum of core sizes)
    (the functions above work on the same merged runs without the tables)."""
    n = len(cores)
    if n == 0:
        return Claims(torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, 0))
    runs = claim_runs(cores)
    member, value = shared_tables(runs, np.arange(runs.positions.size))
    return Claims(torch.from_numpy(runs.positions), member, value)


def task_groups(jaccard: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """Group labels (N,): connected components of the graph 'Jaccard >= tau' (the paper's grouping)."""
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
    if labels.unique().numel() == N:  # every task its own group (the usual case): groups claiming = claims
        groups_claiming = claims
    else:
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
