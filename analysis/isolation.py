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
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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


SAMPLE = 65_536  # entries sampled to place the selection threshold
SLACK = 1.5  # aim the threshold at ~1.5 k candidates so one exact top-k over them finishes the job


def _order(idx: torch.Tensor, ordered: bool) -> torch.Tensor:
    return idx.sort().values if ordered else idx


def top_indices(scores: torch.Tensor, k: int, *, ordered: bool = True) -> torch.Tensor:
    """Flat positions (k,) of the k largest entries of `scores` (any shape), in linear time; sorted
    ascending unless `ordered` is False (a caller that only scatters through them skips the sort).

    Exact, not approximate: a threshold read from a seeded random sample of the scores is placed so that
    about 1.5 k entries pass (one comparison pass), and an exact top-k runs over those candidates only.
    When the sample puts the threshold too high (fewer than k pass) a lower one is tried, then a full
    top-k. Cost ~ one pass over the scores instead of a sort; ties at the boundary are broken arbitrarily
    (as any top-k does)."""
    flat = scores.reshape(-1)
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    if n <= 4 * SAMPLE or k > n // 4 or flat.dtype not in (torch.float32, torch.float64):
        return _order(torch.topk(flat, k, sorted=False).indices, ordered)
    arr = flat.contiguous().numpy()  # a view: numpy's compare + flatnonzero is ~3x faster than torch's here
    g = torch.Generator().manual_seed(n)
    sample = arr[torch.randint(0, n, (SAMPLE,), generator=g).numpy()]  # (SAMPLE,)
    for slack in (SLACK, 4 * SLACK):
        q = min(SAMPLE, max(1, int(SAMPLE * slack * k / n)))  # sample rank of the threshold, from the top
        thr = np.partition(sample, SAMPLE - q)[SAMPLE - q]
        cand = np.flatnonzero(arr >= thr)  # (c,) candidates, c ~ slack * k
        if cand.size >= k:
            pick = np.argpartition(arr[cand], cand.size - k)[cand.size - k:]  # (k,) introselect
            return _order(torch.from_numpy(cand[pick]), ordered)
    return _order(torch.topk(flat, k, sorted=False).indices, ordered)


def top_fraction(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the ceil(p * numel) highest scores (at least one; none when all scores are 0)."""
    flat = scores.reshape(-1)
    k = min(flat.numel(), max(1, math.ceil(p * flat.numel())))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    idx = top_indices(flat, k)  # (k,)
    mask[idx] = flat[idx] > 0
    return mask.reshape(scores.shape)


@dataclass(frozen=True, eq=False)
class Core:
    """One task's core at one module, kept sparse: sorted flat positions and the task's value there.

    For `entries` the value is the signed dW entry (what a transplant copies and the preview compares);
    for `rows` / `columns` it is the row / column energy. p = 1% of a 4096 x 4096 module is 168k
    positions: ~1.3 MB instead of a 16.7M-entry mask, so the cores of a whole 7B-shaped set stay in memory
    between the merge pass and the preview."""

    index: torch.Tensor  # (k,) int32 or int64, sorted flat positions
    value: torch.Tensor  # (k,) float32
    shape: tuple[int, ...]  # (n_out, n_in) for entries, (n_out,) rows, (n_in,) columns

    @property
    def positions(self) -> torch.Tensor:
        return self.index.long()  # (k,)

    def mask(self) -> torch.Tensor:
        out = torch.zeros(int(np.prod(self.shape)), dtype=torch.bool)
        out[self.positions] = True
        return out.reshape(self.shape)

    @staticmethod
    def from_mask(mask: torch.Tensor, scores: torch.Tensor) -> "Core":
        idx = mask.reshape(-1).nonzero().squeeze(1)  # (k,)
        val = scores.reshape(-1)[idx].float()  # (k,)
        return Core(idx, val, tuple(mask.shape))


def dense_into(delta: Delta, buffer: torch.Tensor | None) -> torch.Tensor:
    """dW as float32 (n_out, n_in), written into `buffer` when it fits (no fresh 64 MB page-faulting per call)."""
    if isinstance(delta, LowRankDelta):
        b = delta.B.to(torch.float32) * float(delta.scale)  # (n_out, r)
        a = delta.A.to(torch.float32)  # (r, n_in)
        if buffer is not None and tuple(buffer.shape) == delta.shape:
            return torch.matmul(b, a, out=buffer)
        return b @ a
    return delta.dense(torch.float32)


def task_core(delta: Delta, granularity: str, p: float, buffer: torch.Tensor | None = None,
              scratch: torch.Tensor | None = None) -> Core:
    """The task's core at one module; for `entries` dW is formed once (into `buffer`) and read once
    (|dW| into `scratch`): reused buffers spare a fresh 64 MB allocation per call on 4096-wide modules."""
    if granularity == "entries":
        W = dense_into(delta, buffer)  # (n_out, n_in)
        flat = W.reshape(-1)
        k = min(flat.numel(), max(1, math.ceil(p * flat.numel())))
        mag = torch.abs(flat, out=scratch.reshape(-1)) if scratch is not None and scratch.shape == W.shape else flat.abs()
        idx = top_indices(mag, k)  # (k,)
        val = flat[idx]  # (k,)
        keep = val != 0
        idx, val = idx[keep], val[keep]
        small = idx.to(torch.int32) if flat.numel() < 2**31 else idx
        return Core(small, val.clone(), delta.shape)
    score = importance(delta, granularity)
    return Core.from_mask(top_fraction(score, p), score)


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


Cores = dict[str, dict[int, Core]]  # module -> {input index: core}


def task_cores(adapters: Sequence[Adapter], *, granularity: str = "entries", p: float = 0.01,
               progress: Callable[[int, int, str], None] | None = None, workers: int = 1) -> Cores:
    """Every input's core at every module it has, module by module: one dense module (reused buffer) at a time
    per worker. `workers` > 1 splits the modules between that many threads (one torch thread each; the
    Merge page uses one per core), each with its own buffers; the cores are the same."""
    modules = sorted(set().union(*(a.modules for a in adapters)))
    out: Cores = {}
    done = [0]
    lock = threading.Lock()
    caller = threading.current_thread()  # progress is reported from the caller's thread only

    def work(share: Sequence[str]) -> None:
        buffer: torch.Tensor | None = None
        scratch: torch.Tensor | None = None
        for m in share:
            here = {}
            for i, a in enumerate(adapters):
                if m in a.modules:
                    d = a.modules[m]
                    if granularity == "entries" and (buffer is None or tuple(buffer.shape) != d.shape):
                        buffer, scratch = torch.empty(d.shape), torch.empty(d.shape)  # float32
                    here[i] = task_core(d, granularity, p, buffer, scratch)
            with lock:
                out[m] = here
                done[0] += 1
                step = done[0]
            if progress is not None and threading.current_thread() is caller:
                progress(step, len(modules), m)

    n = max(1, min(int(workers), len(modules)))
    if n == 1:
        work(modules)
    else:
        from concurrent.futures import ThreadPoolExecutor

        from analysis.threads import bounded_threads

        with bounded_threads(1), ThreadPoolExecutor(n - 1, thread_name_prefix="atlas-cores") as pool:
            futures = [pool.submit(work, modules[k::n]) for k in range(1, n)]
            work(modules[0::n])  # this thread's share (it reports progress)
            for f in futures:
                f.result()
    return {m: out[m] for m in modules}


@dataclass(frozen=True)
class Claims:
    """Who claims what at one module: the union of the given cores, and each task's value there."""

    positions: torch.Tensor  # (U,) int64 sorted flat positions claimed by at least one core
    member: torch.Tensor  # (N, U) bool: task i's core contains the position
    value: torch.Tensor  # (N, U) float32: task i's core value there (0 where not a member)


def gather_claims(cores: Sequence[Core]) -> Claims:
    """Union of the cores, membership and values as (N, U) tables, in O(sum of core sizes)
    (`analysis.claims` works on the same merged runs without the tables)."""
    from analysis.claims import claim_runs, shared_tables

    n = len(cores)
    if n == 0:
        return Claims(torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, 0))
    runs = claim_runs(cores)
    member, value = shared_tables(runs, np.arange(runs.positions.size))
    return Claims(torch.from_numpy(runs.positions), member, value)


def pair_counts(cores: Sequence[Core]) -> np.ndarray:
    """(N, N) |C_i & C_j| for one module: each claimed position's set of claimants as a bit code, counted."""
    from analysis.claims import claim_runs

    n = len(cores)
    if n > 62 or n == 0:
        m = gather_claims(cores).member.to(torch.float32)  # (N, U)
        return (m @ m.T).double().numpy()
    runs = claim_runs(cores)
    codes = np.bitwise_or.reduceat(np.left_shift(np.int64(1), runs.owner), runs.starts)  # (U,)
    if n <= 16:  # distinct claimant sets, how many positions each: a bincount over the 2^N codes (linear)
        tally = np.bincount(codes, minlength=1 << n)
        combos = np.flatnonzero(tally)
        counts = tally[combos]
    else:
        combos, counts = np.unique(codes, return_counts=True)
    bits = ((combos[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float64)  # (N, C)
    return (bits * counts) @ bits.T  # (N, N)


def core_overlap(adapters: Sequence[Adapter], *, granularity: str = "entries", p: float = 0.01,
                 cores: Mapping[str, Mapping[int, Any]] | None = None) -> CoreOverlap:
    """Jaccard overlap of the tasks' core regions, pooled over the modules they share.

    # cores per module; # intersections from the union table (N x U booleans, U <= N k);
    # Jaccard = |C_i & C_j| / |C_i | C_j|. `cores`: the `Core`s already computed, per module and input."""
    n = len(adapters)
    sizes = np.zeros(n)
    inter = np.zeros((n, n))
    per_module: dict[str, np.ndarray] = {}
    modules = sorted(set().union(*(a.modules for a in adapters)))
    for module in modules:
        at = cores[module] if cores is not None else {
            i: task_core(a.modules[module], granularity, p) for i, a in enumerate(adapters) if module in a.modules}
        present = sorted(at)
        counts = pair_counts([at[i] for i in present])  # (n_present, n_present)
        local = np.zeros((n, n))
        idx = np.asarray(present)
        local[np.ix_(idx, idx)] = counts
        inter += local
        sizes += np.diag(local)
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
