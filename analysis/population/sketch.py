"""Fixed-size sketches of adapters, computed from the LoRA factors, whose inner products estimate
Frobenius inner products of the updates.

Estimator. For one module with update X = s B A (n_out, n_in), draw Gaussian test matrices
P (n_out, k) and Q (n_in, k) with i.i.d. N(0, 1/k) entries and keep the k x k matrix

    S(X) = (P^T (s B)) (A Q)        # (k, r) @ (r, k): O((n_out + n_in) r k), dW is never formed

For two adapters of one base, P and Q are *the same* for the same module (see "seeds" below), so
<S(X), S(Y)>_F = tr(Q^T X^T P P^T Y Q). Since E[P P^T] = E[Q Q^T] = I and P, Q are independent,
E <S(X), S(Y)> = <X, Y>_F: the estimator is unbiased. Its exact variance (Wick / Isserlis on the
Gaussian entries; G = X^T X, H = Y^T Y, M = X^T Y, all r x r-cheap from the factors) is

    Var = [(k+1) tr(G H) + |X|^2 |Y|^2 + <X,Y>^2 + |M|_F^2] / k^2 + [2 tr(M^2) + |M|_F^2] / k
        <= (4k + 4) / k^2 * |X|_F^2 |Y|_F^2                   (equality for X = Y of rank 1)

(`module_variance`). The worst case is a rank-1 update, whose k x k sketch is rank 1 too; for an
update of stable rank rho the leading term is ~ 4 / (k rho), so real LoRAs fare better than the bound.

Adapter vector. The sketches of all modules are *summed* into one k x k matrix (module sketches are
drawn independently, so cross terms <S_m(X), S_m'(Y)> have mean zero). The sum is therefore an
unbiased estimate of the adapter-level inner product sum_m <X_m, Y_m> (the quantity behind the exact
aggregated cosine of `analysis.overlap.aggregate`), in k^2 numbers whatever the adapter's size:
k = 32 is 1,024 float32 = 4 KB. Its variance adds the per-module variances and, from the cross terms,
(sum_{m != m'} |X_m|^2 |Y_m'|^2 + <X_m,Y_m><X_m',Y_m'>) / k^2 (`adapter_variance`), so

    Var <= (4k + 6) / k^2 * |X|_F^2 |Y|_F^2,

and by Chebyshev P(|est - <X,Y>| >= eps |X| |Y|) <= (4k + 6) / (k^2 eps^2): the JL-style guarantee
in k. Per-module sketches are not stored: the adapter vector is 4 KB whatever the adapter; per module we
keep only its exact norm and top singular values (4 + 4 top bytes each, module names dictionary-encoded by
Parquet), ~5 KB per adapter in total for the 4-module bench adapters, ~15 KB for a 700-module SD UNet LoRA.

Seeds. P and Q of a module depend only on (global seed, module name, module shape, side) through
sha256 -> numpy's legacy `RandomState` (whose stream numpy guarantees stable across versions), rounded to
float32 (so a last-bit difference in a platform's log/sqrt cannot change a draw; the rounding moves the
moments above by ~1e-7), so any machine, worker or later rerun draws the same matrices, and adapters of the
same base are comparable.
Modules present in only one adapter add noise, not bias.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.linalg import delta_svd

DEFAULT_K = 32
DEFAULT_SEED = 0
DEFAULT_TOP = 4  # top singular values kept per module
_CACHE_BYTES = int(os.environ.get("ADAPTER_ATLAS_SKETCH_CACHE_MB", "1024")) << 20  # test matrices kept per process

__all__ = ["SketchConfig", "AdapterSketch", "omega", "module_sketch", "sketch_adapter", "module_variance",
           "adapter_variance", "variance_bound", "DEFAULT_K", "DEFAULT_SEED", "DEFAULT_TOP"]


@dataclass(frozen=True)
class SketchConfig:
    """What makes two sketches comparable: the sketch size k, the global seed, how many top singular values."""

    k: int = DEFAULT_K
    seed: int = DEFAULT_SEED
    top: int = DEFAULT_TOP

    def __post_init__(self) -> None:
        if self.k < 1 or self.top < 0:
            raise ValueError(f"sketch needs k >= 1 and top >= 0, got k={self.k}, top={self.top}")


@dataclass(frozen=True, eq=False)
class AdapterSketch:
    """One adapter's fixed-size summary. `vector` (k*k,) float64; per-module arrays in `modules` order."""

    vector: np.ndarray  # (k*k,)
    norm: float  # exact ||dW||_F over all modules
    modules: tuple[str, ...]
    module_norm: np.ndarray  # (M,) exact
    module_top_sv: np.ndarray  # (M, top), zero-padded where a module's rank is lower
    layout: str  # sha256 of the sorted (module, shape) list: equal for adapters of one base and targets


class _OmegaCache:
    """Byte-bounded LRU of test matrices: regenerating a 4096 x 32 Gaussian costs more than the sketch."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        self.items[key] = value
        self.bytes += value.numel() * value.element_size()
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


_cache = _OmegaCache(_CACHE_BYTES)


def _seed_words(seed: int, module: str, shape: tuple[int, int], side: str) -> np.ndarray:
    text = f"adapter-atlas-sketch|{seed}|{module}|{shape[0]}x{shape[1]}|{side}"
    digest = hashlib.sha256(text.encode()).digest()
    return np.frombuffer(digest, dtype=np.uint32).copy()  # (8,) seeds RandomState's MT19937


def omega(seed: int, module: str, shape: tuple[int, int], side: str, k: int) -> torch.Tensor:
    """The Gaussian test matrix of one side ("out": (n_out, k), "in": (n_in, k)), entries N(0, 1/k), float64.

    Kept in a per-process cache (a worker reuses it for every adapter): sum over modules of (n_out + n_in) k
    8 bytes, ~380 MB for a 7B LoRA on all linear layers at k = 32 (ADAPTER_ATLAS_SKETCH_CACHE_MB, default 1024).
    """
    if side not in ("out", "in"):
        raise ValueError(f"side must be 'out' or 'in', got {side!r}")
    key = (seed, module, tuple(shape), side, k)
    cached = _cache.get(key)
    if cached is None:
        n = shape[0] if side == "out" else shape[1]
        rng = np.random.RandomState(_seed_words(seed, module, shape, side))
        cached = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32).astype(np.float64) / math.sqrt(k))
        _cache.put(key, cached)  # (n, k)
    return cached


def module_sketch(delta: Delta, module: str, config: SketchConfig) -> torch.Tensor:
    """S = P^T dW Q (k, k), from the factors for a LowRankDelta, from W for a DenseDelta."""
    shape = tuple(delta.shape)
    p = omega(config.seed, module, shape, "out", config.k)  # (n_out, k)
    q = omega(config.seed, module, shape, "in", config.k)  # (n_in, k)
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        return (p.T @ b) @ (a @ q)  # (k, r) @ (r, k)
    w = delta.dense(torch.float64)  # (n_out, n_in)
    return p.T @ (w @ q)  # (k, k)


def _layout(adapter: Adapter) -> str:
    text = "\n".join(f"{m}:{d.shape[0]}x{d.shape[1]}" for m, d in sorted(adapter.modules.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _lowrank_spectrum(b: torch.Tensor, a: torch.Tensor, top: int) -> tuple[float, torch.Tensor]:
    """(||B A||_F, top singular values) from the r x r Grams: sigma^2 = eig(G_B^1/2 G_A G_B^1/2).

    Two GEMMs of (n, r) instead of two QRs: at 7B shapes this halves the sketch cost. The squared route
    resolves singular values down to ~1e-7 of the largest; smaller ones are reported as 0.
    """
    gb, ga = b.T @ b, a @ a.T  # (r, r), (r, r)
    norm = math.sqrt(max(float((gb * ga).sum()), 0.0))  # tr(G_B G_A) = ||B A||_F^2 exactly
    w, v = torch.linalg.eigh(gb)  # (r,), (r, r)
    root = (v * w.clamp_min(0.0).sqrt()) @ v.T  # (r, r) G_B^(1/2)
    sig = torch.linalg.eigvalsh(root @ ga @ root).flip(0).clamp_min(0.0).sqrt()  # (r,) descending
    if sig.numel():
        sig = torch.where(sig > 1e-7 * sig[0], sig, torch.zeros_like(sig))
    return norm, sig[:top]


def sketch_adapter(adapter: Adapter, config: SketchConfig = SketchConfig()) -> AdapterSketch:
    """Sum of module sketches (the adapter vector) plus each module's exact norm and top singular values."""
    names = tuple(sorted(adapter.modules))
    total = torch.zeros(config.k, config.k, dtype=torch.float64)  # (k, k)
    norms = np.zeros(len(names))  # (M,)
    top = np.zeros((len(names), config.top))  # (M, top)
    for i, m in enumerate(names):
        delta = adapter.modules[m]
        shape = tuple(delta.shape)
        p = omega(config.seed, m, shape, "out", config.k)  # (n_out, k)
        q = omega(config.seed, m, shape, "in", config.k)  # (n_in, k)
        if isinstance(delta, LowRankDelta):
            b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in): converted once for both uses
            total += (p.T @ b) @ (a @ q)  # (k, r) @ (r, k)
            norms[i], s = _lowrank_spectrum(b, a, config.top)
        else:
            w = delta.dense(torch.float64)  # (n_out, n_in)
            total += p.T @ (w @ q)  # (k, k)
            _, s, _ = delta_svd(delta)  # (rank,)
            norms[i] = float(torch.linalg.vector_norm(s))
        t = min(config.top, s.numel())
        top[i, :t] = s[:t].numpy()
    return AdapterSketch(vector=total.reshape(-1).numpy(), norm=float(np.sqrt((norms ** 2).sum())),
                         modules=names, module_norm=norms, module_top_sv=top, layout=_layout(adapter))


# ---- the variance of the estimator, exactly and as a bound ------------------------------------------

def _grams(x: Delta, y: Delta) -> tuple[float, float, float, float, float, float]:
    """(|X|^2, |Y|^2, <X,Y>, tr(GH), |M|_F^2, tr(M^2)) with G = X^T X, H = Y^T Y, M = X^T Y (dense, small only)."""
    X, Y = x.dense(torch.float64), y.dense(torch.float64)  # (n_out, n_in)
    G, H, M = X.T @ X, Y.T @ Y, X.T @ Y  # (n_in, n_in)
    return (float((X * X).sum()), float((Y * Y).sum()), float((X * Y).sum()), float((G * H).sum()),
            float((M * M).sum()), float((M * M.T).sum()))


def module_variance(x: Delta, y: Delta, k: int) -> float:
    """Exact Var <S(X), S(Y)> for one module (formula in the module docstring). Forms dW: for tests/benches."""
    xx, yy, xy, tr_gh, m_f2, tr_m2 = _grams(x, y)
    return ((k + 1) * tr_gh + xx * yy + xy ** 2 + m_f2) / k ** 2 + (2 * tr_m2 + m_f2) / k


def adapter_variance(x: Mapping[str, Delta], y: Mapping[str, Delta], k: int) -> float:
    """Exact Var of the summed-sketch inner product of two adapters given as {module: delta}."""
    modules = sorted(set(x) | set(y))
    var = sum(module_variance(x[m], y[m], k) for m in modules if m in x and m in y)
    xx = {m: x[m].frobenius_norm() ** 2 if m in x else 0.0 for m in modules}
    yy = {m: y[m].frobenius_norm() ** 2 if m in y else 0.0 for m in modules}
    xy = {m: _grams(x[m], y[m])[2] if m in x and m in y else 0.0 for m in modules}
    cross = sum(xx[a] * yy[b] + xy[a] * xy[b] for a in modules for b in modules if a != b)
    return var + cross / k ** 2


def variance_bound(norm_x: float, norm_y: float, k: int) -> float:
    """(4k + 6) / k^2 |X|^2 |Y|^2: the bound on the summed-sketch variance whatever the ranks and modules."""
    return (4 * k + 6) / k ** 2 * norm_x ** 2 * norm_y ** 2
