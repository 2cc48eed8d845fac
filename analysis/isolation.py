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
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta, adapter_list
from analysis.errors import RecipeError
from analysis.progress import Progress

GRANULARITIES = ("entries", "rows", "columns")


class CoreSettings(NamedTuple):
    """How task cores are chosen: the unit (`entries`, `rows`, `columns`) and the top fraction p per module."""

    granularity: str
    p: float


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


@dataclass(frozen=True)
class CoreChoice:
    """Which task cores to use, in one value: their settings (None: the isolation method's declared defaults)
    and, optionally, those cores already computed for the adapters at hand in their order (`task_cores`; the
    Merge page computes them once for every method it compares). A merge whose method picks cores with the
    same settings reuses them; a preview measures retention on them."""

    settings: CoreSettings | None = None
    computed: Cores | None = None

    def for_settings(self, settings: CoreSettings) -> Cores | None:
        """The computed cores when they were computed with `settings`, else None (compute them afresh)."""
        return self.computed if self.settings is not None and tuple(self.settings) == tuple(settings) else None


def task_cores(adapters: Sequence[Adapter], *, granularity: str = "entries", p: float = 0.01,
               progress: Progress | None = None, workers: int = 1) -> Cores:
    """Every input's core at every module it has, module by module: one dense module (reused buffer) at a time
    per worker. `workers` > 1 splits the modules between that many threads (one torch thread each; the
    Merge page uses one per core), each with its own buffers; the cores are the same."""
    adapters = adapter_list(adapters)
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


class ClaimRuns:
    """The cores' claims in position order (K entries) and the distinct positions they cover (U).

    positions (U,) int64 sorted, each claimed by at least one core; count (U,) claimants per position;
    starts (U,) first entry of each position; owner (K,) core of each entry; slot (K,) index of each
    entry's position (computed when asked); value (K,) float32 that core's value there (when asked;
    None when a core carries no values)."""

    def __init__(self, cores: Sequence[Core]) -> None:
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


def claim_runs(cores: Sequence[Core]) -> ClaimRuns:
    return ClaimRuns(cores)


def pair_counts(cores: Sequence[Core]) -> np.ndarray:
    """(N, N) |C_i & C_j| for one module: each claimed position's set of claimants as a bit code, counted."""
    n = len(cores)
    runs = claim_runs(cores)
    if n > 62 or n == 0:  # too many cores for a bit code: the (N, U) membership table
        member = torch.zeros(n, runs.positions.size)
        member[torch.from_numpy(runs.owner), torch.from_numpy(runs.slot)] = 1.0
        return (member @ member.T).double().numpy()
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
                 cores: Mapping[str, Mapping[int, Core]] | None = None) -> CoreOverlap:
    """Jaccard overlap of the tasks' core regions, pooled over the modules they share (`adapters`: an
    `AdapterSet` or a list of Adapters).

    # cores per module; # intersections from the union table (N x U booleans, U <= N k);
    # Jaccard = |C_i & C_j| / |C_i | C_j|. `cores`: the `Core`s already computed, per module and input."""
    adapters = adapter_list(adapters)
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
