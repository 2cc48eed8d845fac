"""Small factored building blocks shared by the merge methods.

Every method works on dW per module, never on A and B separately (averaging A and B separately, as
PEFT's `linear` does, gives (sum B)(sum A), which is not a mean of the updates). A linear combination
of low-rank updates is itself low rank: sum_i c_i s_i B_i A_i = [c_1 s_1 B_1 .. c_N s_N B_N] [A_1; ..; A_N],
so linear-type results stay exact LowRankDeltas with concatenated factors. Only methods that act
entry-wise (TIES, DARE, magnitude pruning, entry isolation) densify, one module at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from analysis.adapters.model import Delta, DenseDelta, LowRankDelta
from analysis.linalg import delta_svd, gram_all_pairs, rank_r_svd
from analysis.merge.structured import SparsePlusLowRank

DENSE_DTYPE = torch.float32  # entry-wise methods: half the memory of float64, ample for 1e-5 checks


def like(template: Delta, *, A: torch.Tensor | None = None, B: torch.Tensor | None = None,
         W: torch.Tensor | None = None, scale: float = 1.0) -> Delta:
    """A new delta carrying `template`'s layout metadata (kernel shape, Conv1D flag, kind)."""
    meta = dict(kernel_shape=template.kernel_shape, fan_in_fan_out=template.fan_in_fan_out, kind=template.kind)
    if W is not None:
        return DenseDelta(W, **meta)
    assert A is not None and B is not None
    return LowRankDelta(A=A, B=B, scale=scale, **meta)


def scaled_factors(delta: LowRankDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """(s B, A) in float64."""
    return delta.factors(torch.float64)  # (n_out, r), (r, n_in)


def dense(delta: Delta) -> torch.Tensor:
    """dW as a dense (out, in) tensor in DENSE_DTYPE."""
    return delta.dense(DENSE_DTYPE)  # (n_out, n_in)


def all_lowrank(deltas: Sequence[Delta]) -> bool:
    return all(isinstance(d, LowRankDelta) for d in deltas)


def linear_combination(deltas: Sequence[Delta], coefs: Sequence[float]) -> Delta:
    """sum_i coefs[i] * dW_i, exact: concatenated factors when every input is low rank, else dense."""
    if all_lowrank(deltas):
        Bs, As = [], []
        for d, c in zip(deltas, coefs):
            b, a = scaled_factors(d)  # (n_out, r_i), (r_i, n_in)
            Bs.append(b * float(c))
            As.append(a)
        return like(deltas[0], A=torch.cat(As, dim=0), B=torch.cat(Bs, dim=1))  # (R, n_in), (n_out, R)
    W = sum(dense(d) * float(c) for d, c in zip(deltas, coefs))  # (n_out, n_in)
    return like(deltas[0], W=W)


def inner(x: Delta, y: Delta) -> float:
    """Frobenius inner product <dW_x, dW_y>, from r x r Gram blocks when both are low rank."""
    if isinstance(x, LowRankDelta) and isinstance(y, LowRankDelta):
        bx, ax = scaled_factors(x)
        by, ay = scaled_factors(y)
        return float(((bx.T @ by) * (ax @ ay.T)).sum())  # (r_x, r_y) elementwise (r_x, r_y)
    if isinstance(y, LowRankDelta):
        x, y = y, x
    if isinstance(x, LowRankDelta):  # <B A, W> = sum(B * (W A^T)): one thin product, x never formed
        b, a = scaled_factors(x)
        return float((b * (y.dense(torch.float64) @ a.T)).sum())  # (n_out, r)
    return float((x.dense(torch.float64) * y.dense(torch.float64)).sum())


def gram(deltas: Sequence[Delta]) -> torch.Tensor:
    """(N, N) float64 matrix of Frobenius inner products (two GEMMs on the stacked factors)."""
    return torch.from_numpy(gram_all_pairs(deltas))  # (N, N)


def svd_of(delta: Delta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V) with dW = U diag(S) V^T (zero singular values dropped); factored when low rank."""
    return delta_svd(delta)  # (n_out, k), (k,), (n_in, k)


@dataclass(frozen=True)
class ModuleSpectrum:
    """What a module's export at any rank costs: its top singular values and exact ||dW||_F^2.

    `values` are all nonzero singular values when `complete` (low-rank modules, exact SVDs), else the top
    rank + oversampling ones of the randomised route; the error at rank r <= len(values) is then
    sqrt(norm2 - sum_{i<=r} values_i^2) / sqrt(norm2), exact for the rank-r answer that route returns."""

    values: torch.Tensor  # (k,) descending, float64
    norm2: float
    complete: bool
    method: str = "exact"  # exact | randomized

    def relative_error(self, rank: int | None) -> float:
        if rank is None or self.norm2 <= 0.0:
            return 0.0
        kept = float((self.values[:rank].double() ** 2).sum())
        return math.sqrt(max(self.norm2 - kept, 0.0) / self.norm2)


def zero_like(template: Delta) -> LowRankDelta:
    """An all-zero update of the template's shape (a module no weighted input contributes to)."""
    n_out, n_in = template.shape
    return like(template, A=torch.zeros(1, n_in, dtype=torch.float64),  # type: ignore[return-value]
                B=torch.zeros(n_out, 1, dtype=torch.float64))


def _balanced(template: Delta, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, rank: int,
              dtype: torch.dtype = torch.float64) -> LowRankDelta:
    """B = U sqrt(S), A = sqrt(S) V^T so neither factor carries all the magnitude (kinder to fp16 exports)."""
    if S.numel() == 0 or float(S[0]) == 0.0:  # an all-zero update: one zero component keeps the export well formed
        return zero_like(template)
    k = max(1, min(rank, int(S.shape[0])))
    root = S[:k].sqrt()  # (k,)
    return like(template, A=(root[:, None] * V[:, :k].T).to(dtype),  # type: ignore[return-value]
                B=(U[:, :k] * root).to(dtype))


def svds_of(deltas: Sequence[Delta]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`svd_of` for several deltas: one batched QR/SVD when they are LoRAs of one shape and rank (the usual
    case: N tasks at one module), so N small factorisations cost one call instead of N."""
    if len(deltas) < 2 or not all_lowrank(deltas) or len({(d.shape, d.rank) for d in deltas}) != 1:
        return [svd_of(d) for d in deltas]
    fac = [scaled_factors(d) for d in deltas]  # type: ignore[arg-type]
    Qb, Rb = torch.linalg.qr(torch.stack([b for b, _ in fac]))  # (N, n_out, r), (N, r, r)
    Qa, Ra = torch.linalg.qr(torch.stack([a.T for _, a in fac]))  # (N, n_in, r), (N, r, r)
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.transpose(1, 2))  # (N, r, r), (N, r), (N, r, r)
    U, V = Qb @ Uc, Qa @ Vch.transpose(1, 2)  # (N, n_out, r), (N, n_in, r)
    rtol = max(deltas[0].shape) * float(torch.finfo(torch.float64).eps)  # factored_svd's default
    out = []
    for i in range(len(deltas)):
        k = int((S[i] > rtol * S[i, 0]).sum()) if float(S[i, 0]) > 0 else 0
        out.append((U[i, :, :k], S[i, :k], V[i, :, :k]))
    return out


def truncate_with_spectrum(delta: "Delta | SparsePlusLowRank", rank: int) -> tuple[LowRankDelta, ModuleSpectrum]:
    """Best rank-`rank` approximation (Eckart-Young) and the module's spectrum, by the cheapest exact-enough route.

    - LowRankDelta: exact factored SVD (QR of the factors, SVD of the small core); stays exact.
    - DenseDelta / SparsePlusLowRank: randomised range finder with an a-posteriori convergence check
      (`analysis.linalg.rank_r_svd`), exact SVD when the check fails or the module is small. Never a
      full SVD of a large dense update when a rank-R answer is asked."""
    if isinstance(delta, LowRankDelta):
        U, S, V = svd_of(delta)  # (n_out, k), (k,), (n_in, k)
        spec = ModuleSpectrum(S, float((S**2).sum()), True, "exact")
        return _balanced(delta, U, S, V, rank), spec
    if isinstance(delta, SparsePlusLowRank):
        matmul, rmatmul = delta.operator()
        norm2, template = delta.norm2(), delta.base
        dense_of = delta.dense
    else:
        W = delta.dense(torch.float32)  # (n_out, n_in)
        norm2, template = float((W.double() ** 2).sum()), delta

        def matmul(X: torch.Tensor) -> torch.Tensor:
            return W @ X.float()

        def rmatmul(Y: torch.Tensor) -> torch.Tensor:
            return W.T @ Y.float()

        def dense_of() -> torch.Tensor:
            return W
    res = rank_r_svd(matmul, rmatmul, delta.shape, rank, norm2=norm2, dense=dense_of)
    complete = res.method == "exact"
    spec = ModuleSpectrum(res.values.double(), norm2, complete, res.method)
    # float32 factors: the source was float32 (half the memory of a 7B-sized rank-64 result)
    return _balanced(template, res.U, res.S, res.V, rank, torch.float32), spec


def truncate(delta: "Delta | SparsePlusLowRank", rank: int) -> LowRankDelta:
    """Best rank-`rank` approximation with balanced factors (see `truncate_with_spectrum`)."""
    return truncate_with_spectrum(delta, rank)[0]


def compact(delta: LowRankDelta) -> LowRankDelta:
    """The same update at rank <= min(n_out, n_in) when its factors are wider than the module (exact)."""
    return truncate(delta, min(delta.shape)) if delta.rank > min(delta.shape) else delta


def materialize(delta: "Delta | SparsePlusLowRank") -> Delta:
    """A plain Delta: structured results become a DenseDelta (the only time they are formed)."""
    return delta.materialize() if isinstance(delta, SparsePlusLowRank) else delta
