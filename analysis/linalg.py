"""Factored linear algebra on adapter updates dW = s * B @ A, without forming dW.

A LoRA update of a 4096 x 4096 layer at rank 16 is described by 2 * 4096 * 16 numbers; forming it
costs 16.7M. Everything here works on the factors: QR of the two thin factors and an SVD of the
small r x r core give the exact thin SVD, and two GEMMs on the stacked factors of N adapters give
every Frobenius inner product at once. `DenseDelta`s (LoHa, LoKr, full layers) are handled exactly
alongside, so callers never ask which format an adapter came from.

Conventions: inputs may be torch tensors or numpy arrays; all arithmetic is float64. The SVD
functions return torch float64 tensors (U (n_out, k), S (k,), V (n_in, k)) so they can feed merges
and exports directly; the table-like results (Gram matrices, angles, similarity grids) are numpy.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from analysis.adapters.model import Delta, DenseDelta, LowRankDelta

log = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray

__all__ = [
    "factored_svd",
    "block_sums",
    "delta_svd",
    "singular_values",
    "gram_all_pairs",
    "principal_angles",
    "subspace_similarity",
    "subspace_similarity_grid",
    "energy_overlap",
    "spectrum_stats",
    "effective_rank",
    "RankR",
    "rank_r_svd",
]


def _f64(x: ArrayLike) -> torch.Tensor:
    """Any 2-D/1-D array as a float64 torch tensor (no copy when it already is one)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return x.to(torch.float64)


def _truncate(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, rtol: float):
    """Drop singular values at or below rtol * S[0] (and exact zeros): they carry no direction."""
    if S.numel() == 0 or float(S[0]) == 0.0:
        k = 0
    else:
        k = int((S > rtol * S[0]).sum())
    return U[:, :k], S[:k], V[:, :k]


def factored_svd(
    B: ArrayLike, A: ArrayLike, *, rtol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD of B @ A from its factors: U (n_out, k), S (k,), V (n_in, k), B @ A = U diag(S) V^T.

    Steps: (1) QR(B) = Q_B R_B and QR(A^T) = Q_A R_A, (2) SVD of the small core R_B R_A^T = U_c S V_c^T,
    (3) U = Q_B U_c, V = Q_A V_c. Cost O((n_out + n_in) r^2) instead of O(n_out n_in r).
    Singular values <= rtol * S[0] are dropped (default max(n_out, n_in) * eps, numpy's matrix_rank
    rule), so k <= r and a rank-deficient LoRA reports its true rank; an all-zero B gives k = 0.
    """
    b = _f64(B)  # (n_out, r)
    a = _f64(A)  # (r, n_in)
    if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"factored_svd expects B (n_out, r) and A (r, n_in), got {tuple(b.shape)} and {tuple(a.shape)}")
    n_out, n_in = b.shape[0], a.shape[1]
    if rtol is None:
        rtol = max(n_out, n_in, 1) * float(np.finfo(np.float64).eps)
    # 1. orthonormal bases of the two factors' spans
    q_b, r_b = torch.linalg.qr(b)  # (n_out, m_b), (m_b, r)
    q_a, r_a = torch.linalg.qr(a.T)  # (n_in, m_a), (m_a, r)
    # 2. the small core carries all the spectrum
    core = r_b @ r_a.T  # (m_b, m_a)
    u_c, s, vh_c = torch.linalg.svd(core, full_matrices=False)  # (m_b, m), (m,), (m, m_a)
    # 3. lift back to the full spaces
    u = q_b @ u_c  # (n_out, m)
    v = q_a @ vh_c.T  # (n_in, m)
    return _truncate(u, s, v, rtol)


def singular_values(delta: Delta) -> torch.Tensor:
    """The nonzero singular values (k,) of one module's update, descending, float64, as `delta_svd` returns
    them; for a LowRankDelta from the R factors of QR(B) and QR(A^T) only (no orthonormal bases formed)."""
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        n_out, n_in = b.shape[0], a.shape[1]
        r_b = torch.linalg.qr(b, mode="r")[1]  # (m_b, r)
        r_a = torch.linalg.qr(a.T, mode="r")[1]  # (m_a, r)
        s = torch.linalg.svdvals(r_b @ r_a.T)  # (m,)
        rtol = max(n_out, n_in, 1) * float(np.finfo(np.float64).eps)
        k = 0 if s.numel() == 0 or float(s[0]) == 0.0 else int((s > rtol * s[0]).sum())
        return s[:k]
    return delta_svd(delta)[1]


def delta_svd(
    delta: Delta, *, rtol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V) of one module's update, factored for a LowRankDelta, dense for a DenseDelta.

    The LoRA scale is folded into B, so a negative scale flips the sign of U (S stays >= 0).
    For a DenseDelta the default tolerance is the machine epsilon of its stored dtype relative to
    S[0]: a float16 LoKr product has no meaningful singular values below its own rounding noise.
    """
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        return factored_svd(b, a, rtol=rtol)
    if isinstance(delta, DenseDelta):
        w = delta.W
        if rtol is None:
            src = w.dtype if w.dtype.is_floating_point else torch.float64
            rtol = float(torch.finfo(src).eps)
        u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)  # (n_out, m), (m,), (m, n_in)
        return _truncate(u, s, vh.T, rtol)
    raise TypeError(f"delta_svd expects a LowRankDelta or DenseDelta, got {type(delta).__name__}")


def _segment_matrix(sizes: Sequence[int]) -> torch.Tensor:
    """(N, sum(sizes)) indicator: row i has ones on the columns of block i, for blockwise sums by GEMM."""
    total = int(sum(sizes))
    m = torch.zeros(len(sizes), total, dtype=torch.float64)  # (N, R)
    start = 0
    for i, size in enumerate(sizes):
        m[i, start:start + size] = 1.0
        start += size
    return m


def block_sums(P: torch.Tensor, row_sizes: Sequence[int], col_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Sum each (r_i, r_j) block of P: M_row P M_col^T, the blockwise reduction behind all-pairs tables."""
    m_row = _segment_matrix(row_sizes)  # (N, R)
    m_col = m_row if col_sizes is None else _segment_matrix(col_sizes)  # (M, C)
    return m_row @ P @ m_col.T  # (N, M)


def gram_all_pairs(deltas: Sequence[Delta]) -> np.ndarray:
    """G[i, j] = <dW_i, dW_j>_F for every pair of one module's deltas, without densifying low-rank ones.

    Low-rank part: with Bcat = [s_1 B_1 .. s_N B_N] (n_out, R) and Acat = [A_1; ..; A_N] (R, n_in),
    G_B = Bcat^T Bcat and G_A = Acat Acat^T are two GEMMs, and <dW_i, dW_j> is the sum of the
    elementwise product of their (r_i, r_j) blocks (trace identity tr(A_i^T B_i^T B_j A_j)).
    Dense deltas: <W, B A> = sum(B * (W A^T)), and dense-dense pairs use the plain elementwise sum.
    """
    if not deltas:
        return np.zeros((0, 0))
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) != 1:
        raise ValueError(f"gram_all_pairs needs deltas of one shape, got {sorted(shapes)}")
    n = len(deltas)
    G = torch.zeros(n, n, dtype=torch.float64)  # (N, N)
    low = [i for i, d in enumerate(deltas) if isinstance(d, LowRankDelta)]
    dense = [i for i, d in enumerate(deltas) if not isinstance(d, LowRankDelta)]
    if low:
        factors = [deltas[i].factors(torch.float64) for i in low]
        ranks = [a.shape[0] for _, a in factors]
        b_cat = torch.cat([b for b, _ in factors], dim=1)  # (n_out, R)
        a_cat = torch.cat([a for _, a in factors], dim=0)  # (R, n_in)
        g_b = b_cat.T @ b_cat  # (R, R)
        g_a = a_cat @ a_cat.T  # (R, R)
        idx = torch.tensor(low)
        G[idx[:, None], idx[None, :]] = block_sums(g_b * g_a, ranks)  # (N_low, N_low)
    for i in dense:
        w_i = deltas[i].dense(torch.float64)  # (n_out, n_in)
        for j in dense:
            if j >= i:
                G[i, j] = G[j, i] = (w_i * deltas[j].dense(torch.float64)).sum()
        if low:
            w_at = w_i @ a_cat.T  # (n_out, R)
            cross = block_sums((b_cat * w_at).sum(dim=0, keepdim=True), [1], ranks)[0]  # (N_low,)
            G[i, idx] = cross
            G[idx, i] = cross
    return G.numpy()


def principal_angles(U1: ArrayLike, U2: ArrayLike) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases (n, p), (n, q).

    Follows scipy.linalg.subspace_angles (Knyazev & Argentati, SIAM J. Sci. Comput. 23(6), 2002):
    cosines from svd(U1^T U2) are accurate for large angles, but arccos loses all precision near 0,
    so angles whose cosine^2 >= 1/2 come from the sines, the singular values of the part of one basis
    outside the other. Unlike scipy this skips the re-orthonormalisation: inputs must be orthonormal
    (the U/V returned by `delta_svd` are). Returns min(p, q) angles; empty if either is empty.
    """
    qa, qb = _f64(U1), _f64(U2)  # (n, p), (n, q)
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"principal_angles: bases live in different spaces, {qa.shape[0]} vs {qb.shape[0]} rows")
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.zeros(0)
    # 1. cosines
    c = qa.T @ qb  # (p, q)
    sigma = torch.linalg.svdvals(c)  # (m,) descending cosines
    theta = torch.arccos(sigma.clamp(-1.0, 1.0))  # (m,) ascending angles
    # 2. sines, for the angles below 45 degrees
    mask = sigma ** 2 >= 0.5  # (m,)
    if bool(mask.any()):
        if qa.shape[1] >= qb.shape[1]:
            resid = qb - qa @ c  # (n, q) part of U2 outside span(U1)
        else:
            resid = qa - qb @ c.T  # (n, p) part of U1 outside span(U2)
        sines = torch.linalg.svdvals(resid).flip(0)  # (m,) ascending sines
        theta = torch.where(mask, torch.arcsin(sines.clamp(-1.0, 1.0)), theta)  # (m,)
    return np.sort(theta.numpy())


def subspace_similarity(U_i: ArrayLike, U_j: ArrayLike, k: int | None = None, l: int | None = None) -> float:
    """phi(k, l) = ||U_i[:, :k]^T U_j[:, :l]||_F^2 / min(k, l), in [0, 1].

    The normalised subspace similarity of Hu et al., "LoRA: Low-Rank Adaptation of Large Language
    Models" (2021), section 7: 1 when the smaller top subspace lies inside the other, 0 when orthogonal.
    """
    ui, uj = _f64(U_i), _f64(U_j)  # (n, r_i), (n, r_j)
    k = ui.shape[1] if k is None else k
    l = uj.shape[1] if l is None else l
    if min(k, l) <= 0:
        return 0.0
    c = ui[:, :k].T @ uj[:, :l]  # (k, l)
    return float((c ** 2).sum()) / min(k, l)


def subspace_similarity_grid(U_i: ArrayLike, U_j: ArrayLike) -> np.ndarray:
    """phi(k, l) for every k in 1..r_i and l in 1..r_j, as an (r_i, r_j) array (grid[k-1, l-1]).

    One product U_i^T U_j and a 2-D cumulative sum of its squares: the data of the LoRA paper's figure.
    """
    ui, uj = _f64(U_i), _f64(U_j)  # (n, r_i), (n, r_j)
    c2 = (ui.T @ uj) ** 2  # (r_i, r_j)
    cum = c2.cumsum(0).cumsum(1)  # (r_i, r_j) sum over the top-left k x l block
    k = torch.arange(1, c2.shape[0] + 1, dtype=torch.float64)[:, None]  # (r_i, 1)
    l = torch.arange(1, c2.shape[1] + 1, dtype=torch.float64)[None, :]  # (1, r_j)
    return (cum / torch.minimum(k, l)).numpy()


def energy_overlap(U_i: ArrayLike, S_i: ArrayLike, U_j: ArrayLike) -> float:
    """Share of dW_i's energy inside dW_j's column space: ||U_j^T dW_i||_F^2 / ||dW_i||_F^2, in [0, 1].

    With dW_i = U_i diag(S_i) V_i^T and V_i orthonormal, ||U_j^T dW_i||_F = ||U_j^T U_i diag(S_i)||_F,
    so V_i is not needed. Pass (V_i, S_i, V_j) for the input-side share (how much of dW_i's row
    space dW_j reads). Asymmetric: a small update inside a big one has overlap 1, the reverse less.
    """
    ui, s, uj = _f64(U_i), _f64(S_i), _f64(U_j)  # (n, r_i), (r_i,), (n, r_j)
    total = float((s ** 2).sum())
    if total == 0.0 or uj.shape[1] == 0:
        return 0.0
    inside = (uj.T @ ui) * s[None, :]  # (r_j, r_i)
    return min(float((inside ** 2).sum()) / total, 1.0)


def effective_rank(S: ArrayLike) -> float:
    """exp of the Shannon entropy of S / sum(S) (Roy & Vetterli, "The effective rank", EUSIPCO 2007).

    1 for a rank-1 spectrum, k for k equal singular values; a continuous measure of how many
    directions an update really uses.
    """
    s = np.asarray(_f64(S).numpy() if isinstance(S, torch.Tensor) else S, dtype=np.float64)
    total = s.sum()
    if s.size == 0 or total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def spectrum_stats(S: ArrayLike) -> dict[str, float]:
    """Summary of one singular-value spectrum: Frobenius norm, top singular value, effective rank, stable rank.

    Stable rank ||dW||_F^2 / ||dW||_2^2 is the robust rank of numerical analysis; effective rank is
    the entropy-based one. Both are 0 for an all-zero update.
    """
    s = _f64(S).numpy() if isinstance(S, torch.Tensor) else np.asarray(S, dtype=np.float64)
    if s.size == 0 or float(s.max(initial=0.0)) == 0.0:
        return {"norm": 0.0, "top_sv": 0.0, "effective_rank": 0.0, "stable_rank": 0.0}
    top = float(s.max())
    energy = float((s ** 2).sum())
    return {
        "norm": math.sqrt(energy),
        "top_sv": top,
        "effective_rank": effective_rank(s),
        "stable_rank": energy / top ** 2,
    }


# --- best rank-R approximation of an update that is not (cheaply) low rank ---------------------------

RSVD_OVERSAMPLE = 10  # extra sketch columns beyond the rank asked (Halko, Martinsson & Tropp 2011, sec. 4.2)
RSVD_TOL = 1e-2  # accept when one more power iteration would lower the squared error by < 1% of itself
RSVD_FLOOR = 1e-5  # ... or by < 1e-5 of ||dW||_F^2 (float32 rounding: nothing finer is measurable)
RSVD_MAX_ITERS = 8  # power iterations before giving up and taking the exact SVD


@dataclass(frozen=True)
class RankR:
    """A rank-R answer U diag(S) V^T and what it is known to cost.

    `values` are the singular values found (descending, up to R + oversampling, all of them when exact);
    `norm2` is the exact ||dW||_F^2; `error2` = ||dW - U diag(S) V^T||_F^2, exact whatever the route
    (for the randomised route it equals norm2 - sum(S^2) because U diag(S) V^T = P dW for the orthogonal
    projector P onto span(U)); `method` is "exact" or "randomized"; `iterations` the power iterations."""

    U: torch.Tensor  # (n_out, k)
    S: torch.Tensor  # (k,)
    V: torch.Tensor  # (n_in, k)
    values: torch.Tensor  # (l,)
    norm2: float
    error2: float
    method: str
    iterations: int = 0


GRAM_SIDE = 256  # short side up to which the exact SVD comes from the Gram matrix's eigendecomposition


def gram_svd(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V) of a float64 matrix with a short side m from eigh of its m x m Gram matrix.

    S^2 are the Gram eigenvalues, exact to ~m eps S[0]^2 absolute (so every error sqrt(norm2 - sum S_k^2) is
    exact to that); singular values below sqrt(m eps) S[0], the Gram route's noise floor, are reported as 0
    and their long-side vectors set to 0 (they carry at most that noise). The kept vectors are orthonormal.
    A few times cheaper than `torch.linalg.svd` when the short side is small (k_proj of a GQA model)."""
    tall = W.shape[0] > W.shape[1]
    X = W.T if tall else W  # (m, n), m <= n
    evals, E = torch.linalg.eigh(X @ X.T)  # ascending, (m,), (m, m)
    evals, E = evals.flip(0), E.flip(1)
    S = evals.clamp(min=0.0).sqrt()  # (m,)
    live = S > (S[:1] * math.sqrt(X.shape[0] * float(torch.finfo(torch.float64).eps)))  # (m,)
    S = S * live
    F = (X.T @ E) * torch.where(live, 1.0 / torch.where(live, S, torch.ones_like(S)), torch.zeros_like(S))  # (n, m)
    return (F, S, E) if tall else (E, S, F)


def _exact_rank_r(W: torch.Tensor, rank: int, norm2: float) -> RankR:
    """Exact thin SVD of a dense matrix (the fallback, and the cheap route for small modules)."""
    if min(W.shape) <= GRAM_SIDE:
        U, S, V = gram_svd(W.to(torch.float64))  # (n_out, m), (m,), (n_in, m)
    else:
        U, S, Vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)  # (n_out, m), (m,), (m, n_in)
        V = Vh.T
    k = min(rank, int(S.numel()))
    return RankR(U[:, :k], S[:k], V[:, :k], S, norm2, max(norm2 - float((S[:k] ** 2).sum()), 0.0), "exact")


def _top_energy(Z: torch.Tensor, rank: int) -> float:
    """sum of the top `rank` squared singular values of a thin Z (n, l), from the l x l Gram matrix."""
    z = Z.to(torch.float64)
    return float(torch.linalg.eigvalsh(z.T @ z).flip(0)[:rank].clamp(min=0.0).sum())


def rank_r_svd(matmul: Callable[[torch.Tensor], torch.Tensor], rmatmul: Callable[[torch.Tensor], torch.Tensor],
               shape: tuple[int, int], rank: int, *, norm2: float, dense: Callable[[], torch.Tensor],
               dtype: torch.dtype = torch.float32, seed: int = 0, tol: float = RSVD_TOL,
               max_iters: int = RSVD_MAX_ITERS) -> RankR:
    """Best rank-`rank` approximation of an operator dW given by products, without a full SVD.

    Randomised range finder with power (subspace) iterations (Halko, Martinsson & Tropp, SIAM Rev. 2011,
    alg. 4.4): Y = dW Omega (l = rank + 10 columns, seeded), Q = orth(Y); Z = dW^T Q gives B = Z^T = Q^T dW,
    whose SVD lifts to dW's. Each further iteration is Q = orth(dW Z), Z = dW^T Q.

    A-posteriori check (stated, and what `error2` reports): the squared error of the answer is exact,
    e(q) = ||dW||_F^2 - sum_{i<=R} s_i(q)^2 with ||dW||_F^2 given exactly by the caller. It can only fall
    with more iterations; we stop at the first q >= 1 where one more iteration lowered it by at most
    tol * e(q) + 1e-5 ||dW||_F^2, i.e. the error is converged to within ~1% of itself. If that has not
    happened after `max_iters` iterations the exact SVD of `dense()` is taken instead. Small matrices
    (min(shape) <= max(2 l, GRAM_SIDE)) go straight to the exact route, which is then cheaper anyway (from
    the short side's Gram matrix up to GRAM_SIDE). The convergence check reads the top singular values of
    Z from its l x l Gram matrix.

    `matmul(X)` = dW X for X (n_in, k); `rmatmul(Y)` = dW^T Y for Y (n_out, k); `dense()` = dW."""
    n_out, n_in = shape
    rank = max(1, int(rank))
    ell = min(rank + RSVD_OVERSAMPLE, n_out, n_in)
    if min(n_out, n_in) <= max(2 * ell, GRAM_SIDE) or norm2 == 0.0:
        return _exact_rank_r(dense(), rank, norm2)
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(n_in, ell, generator=g, dtype=torch.float32).to(dtype)  # (n_in, l)
    Q = torch.linalg.qr(matmul(omega))[0]  # (n_out, l)
    Z = rmatmul(Q)  # (n_in, l) = (Q^T dW)^T
    err_prev = norm2 - _top_energy(Z, rank)
    for it in range(1, max_iters + 1):
        Q = torch.linalg.qr(matmul(torch.linalg.qr(Z)[0]))[0]  # (n_out, l): one power iteration
        Z = rmatmul(Q)  # (n_in, l)
        err = norm2 - _top_energy(Z, rank)
        if err_prev - err <= tol * max(err, 0.0) + RSVD_FLOOR * norm2:
            Uz, S, Vh = torch.linalg.svd(Z.to(torch.float64), full_matrices=False)  # (n_in, l), (l,), (l, l)
            U = Q.to(torch.float64) @ Vh.T  # (n_out, l): B = Q^T dW = Vh^T S Uz^T, so dW ~ (Q Vh^T) S Uz^T
            k = min(rank, int(S.numel()))
            return RankR(U[:, :k], S[:k], Uz[:, :k], S, norm2, max(norm2 - float((S[:k] ** 2).sum()), 0.0),
                         "randomized", it)
        err_prev = err
    log.info("randomised rank-%d SVD of a %dx%d update did not converge in %d iterations: exact SVD",
             rank, n_out, n_in, max_iters)
    return _exact_rank_r(dense(), rank, norm2)
