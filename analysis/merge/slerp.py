"""Spherical interpolation of updates: `slerp` (two adapters) and `multislerp` (any number).

SLERP of deltas is a linear combination with scalar coefficients that depend only on their angle,
so it never needs dW: the angle comes from the Frobenius Gram matrix of the factors and the result is
concatenated factors again (exact low rank). `multislerp` is the weighted spherical (Karcher) mean of
the unit directions, computed by Riemannian gradient steps entirely in coefficient space (every point
on the path is a combination of the inputs), then rescaled to the weighted mean norm; with two inputs
it reduces to SLERP of the unit directions.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Delta
from analysis.merge.ops import gram, linear_combination
from analysis.merge.registry import ModuleContext, Param, ParamValue, register

PARALLEL_EPS = 1e-6  # |cos| above 1 - eps: the arc is degenerate, fall back to linear interpolation


def slerp_coefficients(G: torch.Tensor, t: float) -> tuple[float, float]:
    """(c0, c1) with slerp(x0, x1; t) = c0 x0 + c1 x1, from the 2x2 Gram matrix G of (x0, x1).

    The angle is measured between the normalised inputs and the coefficients applied to the raw
    inputs (as mergekit does), so t=0 and t=1 return the inputs themselves."""
    n0, n1 = math.sqrt(max(float(G[0, 0]), 0.0)), math.sqrt(max(float(G[1, 1]), 0.0))
    if n0 == 0.0 or n1 == 0.0:
        return 1.0 - t, t
    cos = max(-1.0, min(1.0, float(G[0, 1]) / (n0 * n1)))
    if abs(cos) > 1.0 - PARALLEL_EPS:
        return 1.0 - t, t
    omega = math.acos(cos)
    return math.sin((1.0 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)


def multislerp_coefficients(G: torch.Tensor, weights: Sequence[float], *, iters: int = 100,
                            tol: float = 1e-12) -> torch.Tensor:
    """Coefficients c (N,) with multislerp = sum_i c_i x_i, from the Gram matrix G (N, N) of the inputs.

    # normalise: u_i = x_i / |x_i|; # Karcher mean of u_i on the sphere; # rescale to the weighted mean norm."""
    norms = G.diagonal().clamp(min=0).sqrt()  # (N,)
    live = norms > 0
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64) * live  # (N,)
    if float(w.sum()) == 0.0:
        return torch.zeros(len(weights), dtype=torch.float64)
    w = w / w.sum()
    safe = torch.where(live, norms, torch.ones_like(norms))  # (N,)
    Gu = G / (safe[:, None] * safe[None, :])  # (N, N) Gram of unit directions

    def norm(a: torch.Tensor) -> float:
        return math.sqrt(max(float(a @ Gu @ a), 0.0))

    a = w.clone()  # (N,) chordal mean as the starting point
    if norm(a) < 1e-12:
        a = torch.nn.functional.one_hot(torch.argmax(w), len(w)).to(torch.float64)
    a = a / norm(a)
    for _ in range(iters):
        cos = (Gu @ a).clamp(-1.0, 1.0)  # (N,) cos of the angle from the mean to each u_i
        theta = torch.arccos(cos)  # (N,)
        factor = torch.where(theta > 1e-9, theta / torch.sin(theta).clamp(min=1e-300), torch.ones_like(theta))
        # log map: log_m(u_i) = theta_i / sin(theta_i) (u_i - cos_i m), in coefficient space
        logs = factor[:, None] * (torch.eye(len(w), dtype=torch.float64) - cos[:, None] * a[None, :])  # (N, N)
        v = (w * live)[:, None].mul(logs).sum(dim=0)  # (N,) tangent step
        step = norm(v)
        if step < tol:
            break
        a = math.cos(step) * a + math.sin(step) * v / step  # exp map
        a = a / norm(a)
    mean_norm = float((w * norms).sum())
    return torch.where(live, a * mean_norm / safe, torch.zeros_like(a))


T = Param("t", float, 0.5, "interpolation position: 0 returns the first adapter, 1 the second", low=0.0, high=1.0)


@register("slerp", params=[T], min_inputs=2, max_inputs=2, exact_lowrank=True,
          help="spherical interpolation between two adapters at t (weights are not used)")
def slerp(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
          ctx: ModuleContext) -> Delta:
    if len(deltas) == 1:  # the module exists in one input only: interpolate against zero
        c = (1.0 - float(params["t"])) if ctx.indices[0] == 0 else float(params["t"])
        return linear_combination(deltas, [c])
    # angle from the Gram matrix
    c0, c1 = slerp_coefficients(gram(deltas), float(params["t"]))
    # merge
    return linear_combination(deltas, [c0, c1])


@register("multislerp", default_weight="mean", exact_lowrank=True,
          help="weighted spherical (Karcher) mean of the update directions, scaled to the weighted mean norm")
def multislerp(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
               ctx: ModuleContext) -> Delta:
    # Karcher mean in coefficient space
    coefs = multislerp_coefficients(gram(deltas), weights)  # (N,)
    # merge
    return linear_combination(deltas, coefs.tolist())
