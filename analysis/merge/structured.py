"""`SparsePlusLowRank`: a merged module kept as D + B A + S, never formed unless asked.

An entry-isolation merge is a blend of the inputs everywhere except at the positions some core claims:
    dW_merged = sum_i c_i dW_i  off the claimed positions,  v  on them (the union of the cores, <= N p of
    the entries), i.e. the blend plus a sparse correction S = v - blend at those positions.
The blend is exactly low rank for LoRA inputs (concatenated factors; D holds the dense inputs' share),
so the merged module costs O((n_out + n_in) R + nnz) to keep and to multiply by a thin matrix, and its
rank-R export comes from a randomised range finder on those products (`analysis.linalg.rank_r_svd`)
instead of a full SVD of a 4096 x 4096 dense update. `materialize` gives the DenseDelta when asked.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis.adapters.model import Delta, DenseDelta, LowRankDelta

GATHER_CHUNK = 1 << 16  # positions per chunk when reading B A at scattered entries
BIG = 1 << 20  # entries above which gathers from low-rank modules run in float32
GATHER_ROWS = 256  # rows of B A formed at a time when many entries are read


def gather_lowrank(B: torch.Tensor, A: torch.Tensor, positions: torch.Tensor, n_in: int) -> torch.Tensor:
    """(B A) at sorted flat positions (k,), in B's dtype.

    Few positions: row gathers of B and A^T. Many (more than 1/64 of the entries, e.g. the union of the
    cores): blocks of GATHER_ROWS rows of B A are formed one at a time (a few MB) and read at their
    positions; one GEMM pass beats 2 k R scattered reads once k is a sizeable share of the module."""
    n_out = B.shape[0]
    out = torch.empty(positions.numel(), dtype=B.dtype)  # (k,)
    if positions.numel() * 64 < n_out * n_in:
        At = A.T.contiguous()  # (n_in, R): a column of A becomes a contiguous row
        for s in range(0, positions.numel(), GATHER_CHUNK):
            pos = positions[s:s + GATHER_CHUNK]
            out[s:s + GATHER_CHUNK] = (B[pos // n_in] * At[pos % n_in]).sum(dim=1)  # (chunk,)
        return out
    bounds = torch.searchsorted(positions, torch.arange(0, n_out + GATHER_ROWS, GATHER_ROWS) * n_in)
    for blk, r0 in enumerate(range(0, n_out, GATHER_ROWS)):
        lo, hi = int(bounds[blk]), int(bounds[blk + 1])
        if hi > lo:
            rows = B[r0:r0 + GATHER_ROWS] @ A  # (<= GATHER_ROWS, n_in)
            out[lo:hi] = rows.reshape(-1)[positions[lo:hi] - r0 * n_in]
    return out


def gather(delta: Delta, positions: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """dW at sorted flat positions (k,) in `dtype`, without forming dW when it is low rank (computed in
    float32 on modules over BIG entries, or when float32 is asked: ample for the 25% retention test and
    the float32 operator)."""
    if isinstance(delta, LowRankDelta):
        n_out, n_in = delta.shape
        work = torch.float64 if n_out * n_in <= BIG and dtype == torch.float64 else torch.float32
        b, a = delta.factors(work)  # (n_out, r), (r, n_in)
        return gather_lowrank(b, a, positions, n_in).to(dtype)
    return delta.W.reshape(-1)[positions].to(dtype)


def _csr(offsets: np.ndarray, index: np.ndarray, vals: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """CSR matrix from row offsets (n_rows + 1,) and the column index of each value, already in row order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(offsets), torch.from_numpy(index), vals, (n_rows, n_cols))


def _stable_order(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """Stable argsort of non-negative int keys < bound: numpy's radix sort when they fit 16 bits (~2x
    torch's stable sort on a 7B module's 670k claimed positions), torch's otherwise."""
    if bound <= 1 << 16:
        return torch.from_numpy(np.argsort(keys.numpy().astype(np.uint16), kind="stable"))
    return torch.sort(keys.to(torch.int32 if bound < 2**31 else torch.int64), stable=True).indices


@dataclass(frozen=True, eq=False)
class SparsePlusLowRank:
    """dW = `base` (a LowRankDelta or DenseDelta: the blend) except at flat `positions`, where it is `values`.

    `positions` must be sorted and unique (as `analysis.isolation.ClaimRuns.positions` are): the sparse parts
    are built from them without re-sorting."""

    base: Delta
    positions: torch.Tensor  # (nnz,) int64 sorted flat positions
    values: torch.Tensor  # (nnz,) merged values there (float32: transplanted cores are copied exactly)
    claims: Any = None  # the `analysis.isolation.ClaimRuns` the positions came from (a fused preview reuses them)

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    @property
    def base_at(self) -> torch.Tensor:
        """The blend at the positions (nnz,), float64: read once, used by the operator and the norm (kept per
        instance by hand: functools.cached_property's lock on Python 3.11 is shared by all instances)."""
        if "_base_at" not in self.__dict__:
            object.__setattr__(self, "_base_at", gather(self.base, self.positions))
        return self.__dict__["_base_at"]

    def _parts(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        n_out, n_in = self.shape
        pos = self.positions.numpy()  # (nnz,) sorted row-major
        crow = np.searchsorted(pos, np.arange(n_out + 1, dtype=np.int64) * n_in)  # (n_out + 1,) row offsets
        cols = pos % n_in  # (nnz,)
        corr = (self.values.to(torch.float64) - self.base_at).float()  # (nnz,)
        S = _csr(crow, cols, corr, n_out, n_in)  # (n_out, n_in) sparse
        order = _stable_order(torch.from_numpy(cols), n_in).numpy()  # column-major, rows stay sorted
        rows = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(crow))  # (nnz,)
        ccol = np.zeros(n_in + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n_in), out=ccol[1:])
        St = _csr(ccol, rows[order], corr[torch.from_numpy(order)], n_in, n_out)  # (n_in, n_out) sparse
        if isinstance(self.base, LowRankDelta):
            b, a = self.base.factors(torch.float32)  # (n_out, R), (R, n_in)
            return b, a, None, S, St
        return None, None, self.base.dense(torch.float32), S, St

    def operator(self):  # noqa: ANN201 - (matmul, rmatmul) closures in float32
        """(X -> dW X, Y -> dW^T Y) for thin float32 X (n_in, k), Y (n_out, k)."""
        b, a, D, S, St = self._parts()

        def matmul(X: torch.Tensor) -> torch.Tensor:
            X = X.float()
            Y = S @ X  # (n_out, k)
            return Y + (b @ (a @ X) if b is not None else D @ X)

        def rmatmul(Y: torch.Tensor) -> torch.Tensor:
            Y = Y.float()
            X = St @ Y  # (n_in, k)
            return X + (a.T @ (b.T @ Y) if b is not None else D.T @ Y)

        return matmul, rmatmul

    def norm2(self) -> float:
        """||dW||_F^2 = ||base||^2 - ||base at the positions||^2 + ||values||^2, exact (base read only there)."""
        at = self.base_at  # (nnz,)
        v = self.values.to(torch.float64)
        return max(self.base.frobenius_norm() ** 2 - float((at * at).sum()) + float((v * v).sum()), 0.0)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        W = self.base.dense(dtype).contiguous()  # (n_out, n_in), a fresh tensor for low-rank bases
        if isinstance(self.base, DenseDelta) and W.data_ptr() == self.base.W.data_ptr():
            W = W.clone()
        W.view(-1)[self.positions] = self.values.to(dtype)
        return W

    def frobenius_norm(self) -> float:
        return max(self.norm2(), 0.0) ** 0.5

    def materialize(self) -> DenseDelta:
        meta = dict(kernel_shape=self.base.kernel_shape, fan_in_fan_out=self.base.fan_in_fan_out, kind=self.base.kind)
        return DenseDelta(self.dense(torch.float32), **meta)
