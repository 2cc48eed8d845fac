"""KnOTS (Stoica et al. 2024, "Model merging with SVD to tie the KnOTS"): align, then merge.

LoRA updates of different tasks live in different bases, so entry-wise merging (TIES) compares
unrelated coordinates. KnOTS stacks the updates side by side, [dW_1 .. dW_N] = U S [V_1^T .. V_N^T]
(one joint SVD), so dW_i = U S V_i^T with a shared basis U S, and merges only the task-specific V_i
in that common frame. The joint SVD is taken from the factors: [dW_1 .. dW_N] = [B_1 .. B_N] blockdiag(A_i),
QR of [B_1 .. B_N] and of each A_i^T, SVD of an R x R core (R = sum of ranks). The result U S V_merged^T
is an exact LowRankDelta of rank <= R.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.merge.ops import like, scaled_factors, svd_of
from analysis.merge.registry import ModuleContext, Param, ParamValue, register
from analysis.merge.sparsify import DENSITY, LAMBDA, MAJORITY, disjoint_mean, elect_sign, trim


def lowrank_factors(delta: Delta) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) in float64 with dW = B A; a dense delta is factored by its thin SVD."""
    if isinstance(delta, LowRankDelta):
        return scaled_factors(delta)  # (n_out, r), (r, n_in)
    U, S, V = svd_of(delta)
    return U * S, V.T  # (n_out, k), (k, n_in)


def joint_svd(deltas: Sequence[Delta]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """U (n_out, R), S (R,), [V_i (n_in, R)] with dW_i = U diag(S) V_i^T for every i."""
    factors = [lowrank_factors(d) for d in deltas]
    Qb, Rb = torch.linalg.qr(torch.cat([b for b, _ in factors], dim=1))  # (n_out, R), (R, R)
    qa = [torch.linalg.qr(a.T) for _, a in factors]  # [(n_in, r_i), (r_i, r_i)]
    core = Rb @ torch.block_diag(*[r.T for _, r in qa])  # (R, R)
    Uc, S, Vch = torch.linalg.svd(core)  # (R, R), (R,), (R, R)
    U = Qb @ Uc  # (n_out, R)
    Vs, start = [], 0
    for q, _ in qa:
        r = q.shape[1]
        Vs.append(q @ Vch.T[start:start + r])  # (n_in, R)
        start += r
    return U, S, Vs


INNER = Param("inner", str, "ties", "merge applied to the aligned V_i: ties (KnOTS-TIES) or linear (weighted sum)",
              choices=("ties", "linear"))


@register("knots", params=[INNER, DENSITY, MAJORITY, LAMBDA], exact_lowrank=True,
          help="KnOTS (Stoica et al. 2024): joint SVD of the stacked updates, merge the V_i in the shared basis")
def knots(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
          ctx: ModuleContext) -> Delta:
    # align: one SVD of the stacked updates
    U, S, Vs = joint_svd(deltas)
    stacked = torch.stack([v * float(w) for v, w in zip(Vs, weights)])  # (N, n_in, R)
    # merge in the shared basis
    if params["inner"] == "ties":
        trimmed = torch.stack([trim(v, float(params["density"])) for v in stacked])  # (N, n_in, R)
        agree = elect_sign(trimmed, str(params["majority_sign"]))  # (N, n_in, R)
        V = disjoint_mean(trimmed, agree)  # (n_in, R)
    else:
        V = stacked.sum(dim=0)  # (n_in, R)
    return like(deltas[0], B=(U * S) * float(params["lambda"]), A=V.T.contiguous())  # (n_out, R), (R, n_in)
