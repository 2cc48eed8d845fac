"""Who claims which positions of one module, in O(total core size), without (N, U) tables.

The N cores of a module are sorted position lists; their merge (a stable argsort of the concatenation,
i.e. timsort merging N sorted runs) lists every claim once, in position order: K entries for U distinct
positions (K = sum of core sizes, U <= K). Everything the isolation merge and the preview need is a
gather or a bincount over those K entries:
- the merged value at each claimed position: the sole claimant's value where one core claims it (most
  positions), the coefficient maps of `analysis.isolation.coefficient_maps` on the few shared ones;
- per task: its core size, its positions another contributing task also claims (conflicts), its
  positions whose merged value stays within tol of its own (core kept).
`analysis.isolation.gather_claims` builds the (N, U) member/value tables from the same runs for callers
that want them; on a 4096 x 4096 module with four 1% cores those tables are 2.7M cells, the runs 670k.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ClaimRuns:
    """The cores' claims in position order (K entries) and the distinct positions they cover (U).

    positions (U,) int64 sorted, each claimed by at least one core; count (U,) claimants per position;
    starts (U,) first entry of each position; owner (K,) core of each entry; slot (K,) index of each
    entry's position (computed when asked); value (K,) float32 that core's value there (when asked;
    None when a core carries no values)."""

    def __init__(self, cores: Sequence) -> None:  # Sequence[analysis.isolation.Core]
        self._cores = list(cores)
        self.n = len(self._cores)
        idx = [c.index.numpy().astype(np.int64, copy=False) for c in self._cores]
        cat = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)  # (K,)
        self._order = np.argsort(cat, kind="stable")  # (K,) merges the N sorted runs
        ordered = cat[self._order]
        first = np.empty(ordered.size, dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        self.starts = np.flatnonzero(first)  # (U,)
        self.positions = ordered[self.starts]  # (U,)
        self.count = np.diff(self.starts, append=ordered.size)  # (U,)
        self.owner = np.repeat(np.arange(self.n, dtype=np.int64), [a.size for a in idx])[self._order]  # (K,)

    # computed on first use and kept per instance (not functools.cached_property: on Python 3.11 its lock is
    # shared by every instance, which would serialise merges running side by side)
    @property
    def slot(self) -> np.ndarray:
        if "_slot" not in self.__dict__:
            self._slot = np.repeat(np.arange(self.positions.size, dtype=np.int64), self.count)  # (K,)
        return self._slot

    @property
    def value(self) -> np.ndarray | None:
        if "_value" not in self.__dict__:
            self._value = None if not self.n or any(c.value.numel() != c.index.numel() for c in self._cores) else \
                np.concatenate([c.value.float().numpy() for c in self._cores])[self._order]  # (K,)
        return self._value


def claim_runs(cores: Sequence) -> ClaimRuns:  # Sequence[analysis.isolation.Core]
    return ClaimRuns(cores)


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
    claim go through `analysis.isolation.coefficient_maps` (group mean, conflict policy)."""
    from analysis.isolation import coefficient_maps

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
