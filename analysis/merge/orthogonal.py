"""`orthogonal`: project each adapter off the other adapters' subspaces, then sum.

This is the geometric answer to interference (make the updates mutually orthogonal), kept as a
baseline to compare against isolation. With output-side projection, dW_i' = (I - Q Q^T) dW_i where Q
spans the column spaces of every other update; since (I - Q Q^T) B_i A_i = (B_i - Q Q^T B_i) A_i the
result stays an exact LowRankDelta. Its cost is visible: whatever a task shares with the others is
removed from it, and once the others' ranks add up to the layer width nothing is left (capacity).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Delta
from analysis.merge.knots import lowrank_factors
from analysis.merge.ops import like
from analysis.merge.registry import ModuleContext, Param, ParamValue, register

RANK_TOL = 1e-10  # singular values below this share of the largest do not span the others' subspace


def span_basis(blocks: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Orthonormal basis (n, k) of the column span of the given (n, r_j) blocks (k = 0 when none)."""
    if not blocks:
        return torch.zeros(n, 0, dtype=torch.float64)  # (n, 0)
    X = torch.cat(list(blocks), dim=1)  # (n, R)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)  # (n, R), (R,)
    return U[:, : int((S > S.max() * RANK_TOL).sum())] if float(S.max()) > 0 else U[:, :0]


def project_off(X: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """(I - Q Q^T) X for X (n, r) and orthonormal Q (n, k)."""
    return X - Q @ (Q.T @ X)  # (n, r)


SIDE = Param("side", str, "output", "which subspaces to project off: output (columns of dW), input (rows), or both",
             choices=("output", "input", "both"))


@register("orthogonal", params=[SIDE], exact_lowrank=True,
          help="project each update off the others' output/input subspaces, then weighted sum (weights default 1)")
def orthogonal(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
               ctx: ModuleContext) -> Delta:
    factors = [lowrank_factors(d) for d in deltas]  # [(n_out, r_i), (r_i, n_in)]
    side = str(params["side"])
    Bs, As = [], []
    for i, ((b, a), w) in enumerate(zip(factors, weights)):
        others = [f for j, f in enumerate(factors) if j != i]
        # project off the others' subspaces
        if side in ("output", "both"):
            b = project_off(b, span_basis([ob for ob, _ in others], b.shape[0]))  # (n_out, r_i)
        if side in ("input", "both"):
            a = project_off(a.T, span_basis([oa.T for _, oa in others], a.shape[1])).T  # (r_i, n_in)
        Bs.append(b * float(w))
        As.append(a)
    # merge
    return like(deltas[0], B=torch.cat(Bs, dim=1), A=torch.cat(As, dim=0))  # (n_out, R), (R, n_in)
