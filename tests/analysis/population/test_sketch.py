"""Sketch estimator: unbiased, its exact variance formula matches the empirical one, the bound holds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.adapters.model import Adapter, DenseDelta, LowRankDelta
from analysis.population import sketch as sk
from analysis.population.sketch import (
    SketchConfig,
    adapter_variance,
    module_sketch,
    module_variance,
    omega,
    sketch_adapter,
    variance_bound,
)


def _lr(g: torch.Generator, n_out: int, n_in: int, r: int, scale: float = 0.7) -> LowRankDelta:
    return LowRankDelta(A=torch.randn(r, n_in, generator=g, dtype=torch.float64),
                        B=torch.randn(n_out, r, generator=g, dtype=torch.float64), scale=scale)


def _pair() -> tuple[dict, dict]:
    """Two adapters of one base: correlated on module a (shared B), independent on b, a dense module c."""
    g = torch.Generator().manual_seed(7)
    x = {"a": _lr(g, 14, 10, 3), "b": _lr(g, 9, 12, 2), "c": DenseDelta(torch.randn(6, 5, generator=g).double())}
    y = {"a": LowRankDelta(A=x["a"].A + 0.6 * torch.randn(3, 10, generator=g, dtype=torch.float64), B=x["a"].B,
                           scale=0.7),
         "b": _lr(g, 9, 12, 2), "c": DenseDelta(x["c"].W + 0.5 * torch.randn(6, 5, generator=g).double())}
    return x, y


def _exact_inner(x: dict, y: dict) -> float:
    return sum(float((x[m].dense(torch.float64) * y[m].dense(torch.float64)).sum()) for m in x if m in y)


def _summed(modules: dict, config: SketchConfig) -> torch.Tensor:
    return sum(module_sketch(d, m, config) for m, d in modules.items())


def test_factored_sketch_equals_dense_projection() -> None:
    g = torch.Generator().manual_seed(1)
    d = _lr(g, 30, 20, 4)
    cfg = SketchConfig(k=6, seed=3)
    p, q = omega(3, "m", (30, 20), "out", 6), omega(3, "m", (30, 20), "in", 6)
    dense = p.T @ d.dense(torch.float64) @ q  # (k, k) the route that forms dW
    assert torch.allclose(module_sketch(d, "m", cfg), dense, rtol=1e-10, atol=1e-12)


def test_seed_scheme_same_module_same_matrix_else_different() -> None:
    a = omega(0, "layers.0.q", (16, 8), "out", 4).clone()
    sk._cache.items.clear()  # a fresh process draws the same matrix
    sk._cache.bytes = 0
    assert torch.equal(a, omega(0, "layers.0.q", (16, 8), "out", 4))
    for other in (omega(1, "layers.0.q", (16, 8), "out", 4), omega(0, "layers.0.k", (16, 8), "out", 4),
                  omega(0, "layers.0.q", (16, 9), "out", 4)):
        assert not torch.allclose(a, other)
    assert omega(0, "layers.0.q", (16, 8), "in", 4).shape == (8, 4)


def test_unbiased_and_variance_matches_exact_formula() -> None:
    x, y = _pair()
    k, n = 4, 1500
    est = np.array([float((_summed(x, SketchConfig(k=k, seed=s)) * _summed(y, SketchConfig(k=k, seed=s))).sum())
                    for s in range(n)])
    exact = _exact_inner(x, y)
    var = adapter_variance(x, y, k)
    # unbiased: the mean error is within 4 standard errors of zero
    assert abs(est.mean() - exact) < 4 * np.sqrt(var / n)
    # the exact variance formula (Wick) matches the empirical variance (chi-square-ish spread: +-25% at n=1500)
    assert 0.75 * var < est.var() < 1.25 * var
    # and stays under the JL-style bound in k
    nx = np.sqrt(_exact_inner(x, x))
    ny = np.sqrt(_exact_inner(y, y))
    assert var <= variance_bound(nx, ny, k)
    assert np.sqrt(np.mean((est - exact) ** 2)) <= np.sqrt(variance_bound(nx, ny, k))


def test_single_module_variance_formula_against_samples() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = _lr(g, 12, 9, 2), _lr(g, 12, 9, 3)
    k, n = 5, 1500
    est = np.array([float((module_sketch(x, "m", SketchConfig(k=k, seed=s))
                           * module_sketch(y, "m", SketchConfig(k=k, seed=s))).sum()) for s in range(n)])
    var = module_variance(x, y, k)
    assert 0.75 * var < est.var() < 1.25 * var


@pytest.mark.parametrize("k", [1, 4, 32])
def test_bound_is_attained_by_a_rank_one_update(k: int) -> None:
    u = torch.zeros(7, 1, dtype=torch.float64)
    u[0, 0] = 2.0
    v = torch.zeros(1, 5, dtype=torch.float64)
    v[0, 3] = 1.5
    d = LowRankDelta(A=v, B=u, scale=1.0)
    norm2 = 3.0 ** 2
    assert module_variance(d, d, k) == pytest.approx((4 * k + 4) / k ** 2 * norm2 ** 2, rel=1e-12)
    assert module_variance(d, d, k) <= variance_bound(3.0, 3.0, k)


def test_adapter_sketch_is_fixed_size_with_exact_norms_and_spectra() -> None:
    g = torch.Generator().manual_seed(5)
    small = {"a": _lr(g, 8, 6, 2)}
    big = {f"layers.{i}.{t}": _lr(g, 64, 48, 8) for i in range(6) for t in ("q", "v")}
    cfg = SketchConfig(k=8, top=3)
    for modules in (small, big):
        adapter = Adapter(name="x", path=None, format="peft", base_model=None, config={}, modules=modules)
        s = sketch_adapter(adapter, cfg)
        assert s.vector.shape == (64,)
        assert s.norm == pytest.approx(adapter.total_norm(), rel=1e-10)
        first = modules[s.modules[0]].dense(torch.float64)
        top = torch.linalg.svdvals(first)[:3].numpy()
        got = s.module_top_sv[0][: len(top)]
        assert np.allclose(got[got > 0], top[: int((got > 0).sum())], rtol=1e-9)
    assert s.module_top_sv.shape == (12, 3)
