"""Factored math against dense routes: every number here is computed twice, two different ways."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.adapters.model import DenseDelta, LowRankDelta
from analysis.linalg import (
    delta_svd,
    effective_rank,
    energy_overlap,
    factored_svd,
    gram_all_pairs,
    principal_angles,
    spectrum_stats,
    subspace_similarity,
    subspace_similarity_grid,
)

FAST = settings(max_examples=25, deadline=None)


def _lowrank(rng: np.random.Generator, n_out: int, n_in: int, r: int, scale: float | None = None) -> LowRankDelta:
    A = torch.from_numpy(rng.standard_normal((r, n_in))).float()  # (r, n_in)
    B = torch.from_numpy(rng.standard_normal((n_out, r))).float()  # (n_out, r)
    return LowRankDelta(A=A, B=B, scale=float(rng.uniform(-2, 2)) if scale is None else scale)


def _orth(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q  # (n, k)


@given(seed=st.integers(0, 2**31), n_out=st.integers(3, 40), n_in=st.integers(3, 40), r=st.integers(1, 8))
@FAST
def test_factored_svd_equals_dense_svd(seed: int, n_out: int, n_in: int, r: int) -> None:
    rng = np.random.default_rng(seed)
    d = _lowrank(rng, n_out, n_in, r)
    U, S, V = delta_svd(d)
    W = d.dense(torch.float64).numpy()  # (n_out, n_in)
    s_dense = np.linalg.svd(W, compute_uv=False)
    k = min(r, n_out, n_in)
    assert S.shape == (k,)
    np.testing.assert_allclose(S.numpy(), s_dense[:k], rtol=1e-9, atol=1e-12 * s_dense[0])
    np.testing.assert_allclose((U * S) @ V.T, W, atol=1e-10 * s_dense[0])
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-10)


def test_factored_svd_drops_dependent_directions_and_keeps_sign() -> None:
    rng = np.random.default_rng(0)
    B = rng.standard_normal((30, 3))
    B = np.concatenate([B, B[:, :1] * 2.0], axis=1)  # (30, 4) rank 3
    A = rng.standard_normal((4, 20))
    U, S, V = factored_svd(B, A)
    assert S.shape == (3,)
    neg = LowRankDelta(A=torch.from_numpy(A), B=torch.from_numpy(B), scale=-0.5)
    Un, Sn, Vn = delta_svd(neg)
    np.testing.assert_allclose((Un * Sn) @ Vn.T, -0.5 * B @ A, atol=1e-10)
    assert (Sn >= 0).all()
    zero = LowRankDelta(A=torch.from_numpy(A), B=torch.zeros(30, 4), scale=1.0)
    assert delta_svd(zero)[1].numel() == 0


def test_dense_delta_svd_truncates_at_its_dtype_noise() -> None:
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((50, 5)) @ rng.standard_normal((5, 40))).astype(np.float32)
    U, S, V = delta_svd(DenseDelta(W=torch.from_numpy(W)))
    assert S.shape == (5,)
    np.testing.assert_allclose((U * S) @ V.T, W, atol=1e-4 * float(S[0]))


@given(seed=st.integers(0, 2**31), n_low=st.integers(0, 4), n_dense=st.integers(0, 3))
@FAST
def test_gram_all_pairs_matches_dense_inner_products(seed: int, n_low: int, n_dense: int) -> None:
    rng = np.random.default_rng(seed)
    n_out, n_in = 17, 23
    deltas = [_lowrank(rng, n_out, n_in, int(rng.integers(1, 6))) for _ in range(n_low)]
    deltas += [DenseDelta(W=torch.from_numpy(rng.standard_normal((n_out, n_in)))) for _ in range(n_dense)]
    order = rng.permutation(len(deltas))
    deltas = [deltas[i] for i in order]  # low-rank and dense interleaved
    G = gram_all_pairs(deltas)
    flat = np.stack([d.dense(torch.float64).numpy().ravel() for d in deltas]) if deltas else np.zeros((0, 1))
    np.testing.assert_allclose(G, flat @ flat.T, rtol=1e-9, atol=1e-9)
    for i, d in enumerate(deltas):
        assert np.isclose(np.sqrt(G[i, i]), d.frobenius_norm(), rtol=1e-9)


def test_gram_refuses_mixed_shapes() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="one shape"):
        gram_all_pairs([_lowrank(rng, 5, 6, 2), _lowrank(rng, 6, 5, 2)])


@given(seed=st.integers(0, 2**31), n=st.integers(4, 30), p=st.integers(1, 4), q=st.integers(1, 4))
@FAST
def test_principal_angles_match_scipy(seed: int, n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(seed)
    U1, U2 = _orth(rng, n, p), _orth(rng, n, q)
    ours = principal_angles(U1, U2)
    ref = np.sort(scipy.linalg.subspace_angles(U1, U2))
    # when p + q > n the subspaces intersect (true angle 0): scipy reports a few sqrt(eps) ~ 1e-8 there, ours ~1e-16
    np.testing.assert_allclose(ours, ref, atol=1e-12 if p + q <= n else 1e-7)
    assert np.all(np.diff(ours) >= 0)


@pytest.mark.parametrize("angle", [1e-6, 1e-5, 1e-4, 1e-3, 0.3, 1.2])
def test_small_angles_recovered_to_high_relative_accuracy(angle: float) -> None:
    # Planted: U2 rotates U1's first column by `angle` toward a direction outside span(U1).
    rng = np.random.default_rng(3)
    n, k = 200, 4
    Q = _orth(rng, n, k + 1)  # (n, k + 1)
    U1 = Q[:, :k]
    U2 = U1.copy()
    U2[:, 0] = np.cos(angle) * Q[:, 0] + np.sin(angle) * Q[:, k]
    theta = principal_angles(U1, U2)
    assert theta[-1] == pytest.approx(angle, rel=1e-9)
    np.testing.assert_allclose(theta[:-1], 0.0, atol=1e-14)
    np.testing.assert_allclose(theta, np.sort(scipy.linalg.subspace_angles(U1, U2)), rtol=1e-8, atol=1e-14)
    # the naive arccos route is orders of magnitude less accurate at the smallest angle
    naive = np.arccos(np.clip(np.linalg.svd(U1.T @ U2, compute_uv=False), -1, 1)).max()
    if angle <= 1e-6:
        assert abs(naive - angle) / angle > 1e-5 > 100 * abs(theta[-1] - angle) / angle


def test_subspace_similarity_and_grid_agree_with_definition() -> None:
    rng = np.random.default_rng(4)
    U1, U2 = _orth(rng, 40, 5), _orth(rng, 40, 3)
    grid = subspace_similarity_grid(U1, U2)
    assert grid.shape == (5, 3)
    for k in range(1, 6):
        for l in range(1, 4):
            direct = np.linalg.norm(U1[:, :k].T @ U2[:, :l]) ** 2 / min(k, l)
            assert grid[k - 1, l - 1] == pytest.approx(direct, rel=1e-12)
            assert subspace_similarity(U1, U2, k, l) == pytest.approx(direct, rel=1e-12)
    assert subspace_similarity(U1, U1) == pytest.approx(1.0)
    # a subspace inside a bigger one has phi = 1; phi equals mean cos^2 of the principal angles
    assert subspace_similarity(U1[:, :2], U1) == pytest.approx(1.0)
    theta = principal_angles(U1, U2)
    assert subspace_similarity(U1, U2) == pytest.approx(np.mean(np.cos(theta) ** 2), rel=1e-10)


@given(seed=st.integers(0, 2**31), r1=st.integers(1, 5), r2=st.integers(1, 5))
@FAST
def test_energy_overlap_matches_dense_projection(seed: int, r1: int, r2: int) -> None:
    rng = np.random.default_rng(seed)
    d1, d2 = _lowrank(rng, 25, 19, r1), _lowrank(rng, 25, 19, r2)
    U1, S1, V1 = delta_svd(d1)
    U2, _, V2 = delta_svd(d2)
    W1 = d1.dense(torch.float64).numpy()
    P2 = U2.numpy() @ U2.numpy().T  # (n_out, n_out) dense projector onto col(dW_2)
    dense_share = np.linalg.norm(P2 @ W1) ** 2 / np.linalg.norm(W1) ** 2
    assert energy_overlap(U1, S1, U2) == pytest.approx(dense_share, rel=1e-9, abs=1e-12)
    Q2 = V2.numpy() @ V2.numpy().T  # input side
    assert energy_overlap(V1, S1, V2) == pytest.approx(np.linalg.norm(W1 @ Q2) ** 2 / np.linalg.norm(W1) ** 2, rel=1e-9)
    assert energy_overlap(U1, S1, U1) == pytest.approx(1.0)


def test_spectrum_stats() -> None:
    s = np.array([3.0, 3.0, 3.0, 0.0])
    stats = spectrum_stats(s)
    assert stats["norm"] == pytest.approx(np.sqrt(27))
    assert stats["top_sv"] == 3.0
    assert stats["effective_rank"] == pytest.approx(3.0)
    assert stats["stable_rank"] == pytest.approx(3.0)
    decaying = spectrum_stats(torch.tensor([10.0, 1.0, 0.1]))
    assert 1.0 < decaying["effective_rank"] < 2.0
    assert decaying["stable_rank"] == pytest.approx(101.01 / 100)
    assert spectrum_stats(np.zeros(0))["effective_rank"] == 0.0
    assert effective_rank([1.0]) == pytest.approx(1.0)


# --- rank_r_svd: the randomised route against the exact SVD ---------------------------------------------

def _decaying(n_out: int, n_in: int, seed: int, decay: float) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    m = min(n_out, n_in)
    S = decay ** np.arange(m)  # geometric spectrum
    return torch.from_numpy(_orth(rng, n_out, m) @ np.diag(S) @ _orth(rng, n_in, m).T)  # (n_out, n_in)


@pytest.mark.parametrize(("decay", "rank"), [(0.97, 16), (0.9, 8), (0.995, 24)])
def test_rank_r_svd_is_within_its_stated_bound_of_the_exact_svd(decay: float, rank: int) -> None:
    from analysis.linalg import rank_r_svd

    W = _decaying(300, 280, seed=3, decay=decay)  # short side above GRAM_SIDE: the randomised route
    norm2 = float((W**2).sum())
    res = rank_r_svd(lambda X: W @ X.double(), lambda Y: W.T @ Y.double(), tuple(W.shape), rank, norm2=norm2,
                     dense=lambda: W, dtype=torch.float64)
    assert res.method == "randomized" and res.U.shape == (300, rank) and res.V.shape == (280, rank)
    approx = (res.U * res.S) @ res.V.T
    true_err2 = float(((W - approx) ** 2).sum())
    # 1. the reported error is the error of the answer returned (exact identity, not an estimate)
    assert res.error2 == pytest.approx(true_err2, rel=1e-8, abs=1e-12 * norm2)
    # 2. the stated check: within ~1% (tol) of the optimum, plus the 1e-5 ||dW||^2 floor
    S = torch.linalg.svdvals(W)
    opt2 = float((S[rank:] ** 2).sum())
    assert true_err2 <= opt2 * 1.02 + 1e-5 * norm2
    # 3. singular values found are lower bounds of the true ones (interlacing), and close to them
    assert bool((res.S <= S[:rank] * (1 + 1e-9)).all()) and torch.allclose(res.S, S[:rank], rtol=5e-2)


def test_rank_r_svd_falls_back_to_exact_when_the_check_fails_and_for_small_matrices() -> None:
    from analysis.linalg import rank_r_svd

    W = _decaying(300, 280, seed=4, decay=0.999)  # flat spectrum: slow to converge
    norm2 = float((W**2).sum())
    res = rank_r_svd(lambda X: W @ X.double(), lambda Y: W.T @ Y.double(), tuple(W.shape), 8, norm2=norm2,
                     dense=lambda: W, max_iters=0)
    S = torch.linalg.svdvals(W)
    assert res.method == "exact" and torch.allclose(res.S, S[:8]) and res.values.numel() == 280
    small = _decaying(30, 20, seed=5, decay=0.8)
    res = rank_r_svd(lambda X: small @ X, lambda Y: small.T @ Y, (30, 20), 4, norm2=float((small**2).sum()),
                     dense=lambda: small)
    assert res.method == "exact" and res.error2 == pytest.approx(float((torch.linalg.svdvals(small)[4:] ** 2).sum()))


@pytest.mark.parametrize("shape", [(192, 576), (576, 192), (200, 200)])
def test_gram_svd_equals_the_full_svd_including_rank_deficient_matrices(shape: tuple[int, int]) -> None:
    """The exact route for short sides up to GRAM_SIDE (eigh of the Gram matrix) against torch's SVD."""
    from analysis.linalg import GRAM_SIDE, gram_svd, rank_r_svd

    g = torch.Generator().manual_seed(7)
    W = torch.randn(shape[0], 40, generator=g, dtype=torch.float64) @ torch.randn(40, shape[1], generator=g,
                                                                                 dtype=torch.float64)  # rank 40
    U, S, V = gram_svd(W)
    ref = torch.linalg.svdvals(W)
    assert min(shape) <= GRAM_SIDE and S.shape == ref.shape
    assert torch.allclose(S[:40], ref[:40], rtol=1e-10) and float(S[40:].max()) <= 1e-6 * float(ref[0])
    # the top-40 factors rebuild W; the kept vectors are orthonormal
    assert torch.allclose((U[:, :40] * S[:40]) @ V[:, :40].T, W, atol=1e-9 * float(ref[0]))
    assert torch.allclose(U[:, :40].T @ U[:, :40], torch.eye(40, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(V[:, :40].T @ V[:, :40], torch.eye(40, dtype=torch.float64), atol=1e-8)
    # rank_r_svd takes this route for such shapes and reports the exact error of its answer
    norm2 = float((W**2).sum())
    res = rank_r_svd(lambda X: W @ X, lambda Y: W.T @ Y, shape, 10, norm2=norm2, dense=lambda: W)
    approx = (res.U * res.S) @ res.V.T
    assert res.method == "exact" and res.error2 == pytest.approx(float(((W - approx) ** 2).sum()), rel=1e-8)
    assert res.error2 == pytest.approx(float((ref[10:] ** 2).sum()), rel=1e-8)
    # a rank above the true rank: the extra directions carry nothing (zero values, zero vectors) and the
    # answer is W itself
    wide = rank_r_svd(lambda X: W @ X, lambda Y: W.T @ Y, shape, 50, norm2=norm2, dense=lambda: W)
    assert torch.allclose((wide.U * wide.S) @ wide.V.T, W, atol=1e-9 * float(ref[0]))
    assert float(wide.S[40:].abs().max()) == 0.0 and wide.error2 <= 1e-9 * norm2


def test_singular_values_from_the_r_factors_equal_the_factored_svd_and_the_dense_ones() -> None:
    from analysis.adapters.model import DenseDelta, LowRankDelta
    from analysis.linalg import delta_svd, singular_values

    g = torch.Generator().manual_seed(9)
    B = torch.randn(50, 6, generator=g, dtype=torch.float64)
    B[:, 5] = B[:, 0] * 2.0  # rank 5: a dependent column must not report a sixth value
    d = LowRankDelta(A=torch.randn(6, 40, generator=g, dtype=torch.float64), B=B, scale=0.7)
    s = singular_values(d)
    assert torch.allclose(s, delta_svd(d)[1], rtol=1e-10) and s.numel() == 5
    assert torch.allclose(s, torch.linalg.svdvals(d.dense(torch.float64))[:5], rtol=1e-9)
    W = torch.randn(7, 9, generator=g, dtype=torch.float64)
    assert torch.allclose(singular_values(DenseDelta(W)), torch.linalg.svdvals(W))
    assert singular_values(LowRankDelta(A=torch.zeros(2, 4), B=torch.zeros(3, 2), scale=1.0)).numel() == 0
