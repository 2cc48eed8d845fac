"""KnOTS (Stoica et al. 2024, "Model merging with SVD to tie the KnOTS"): align, then merge.

LoRA updates of different tasks live in different bases, so entry-wise merging (TIES) compares
unrelated coordinates. KnOTS stacks the updates side by side, [dW_1 .. dW_N] = U S [V_1^T .. V_N^T]
(one joint SVD), so dW_i = U S V_i^T with a shared basis U S, and merges only the task-specific V_i
in that common frame. The joint SVD is taken from the factors: [dW_1 .. dW_N] = [B_1 .. B_N] blockdiag(A_i),
QR of [B_1 .. B_N] and of each A_i^T, SVD of a small core (at most R x R, R = sum of ranks, and never
wider than the module: R may exceed n_out, e.g. ten rank-32 adapters on a 192-wide k_proj). The result
U S V_merged^T is an exact LowRankDelta of rank <= min(R, n_out).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.merge.ops import compact, like, scaled_factors, svd_of, zero_like
from analysis.merge.registry import ModuleContext, Param, ParamValue, register
from analysis.merge.sparsify import DENSITY, LAMBDA, MAJORITY, ties_merge, trim_rows


def lowrank_factors(delta: Delta) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) in float64 with dW = B A; a dense delta is factored by its thin SVD."""
    if isinstance(delta, LowRankDelta):
        return scaled_factors(delta)  # (n_out, r), (r, n_in)
    U, S, V = svd_of(delta)
    return U * S, V.T  # (n_out, k), (k, n_in)


def joint_svd(deltas: Sequence[Delta], *, rtol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """U (n_out, k), S (k,), [V_i (n_in, k)] with dW_i = U diag(S) V_i^T for every i, k the joint rank.

    # thin QR of [B_1 .. B_N] = Q_B R_B (m = min(n_out, R) columns: R may exceed the width) and of each A_i^T;
    # SVD of the (m, sum m_i) core R_B blockdiag(R_Ai^T); # drop directions with S <= rtol S[0], which carry
    no update (overlapping inputs, or R > n_out): kept, they would take part in TIES' trim with arbitrary
    vectors; # lift: U = Q_B U_c, V_i = Q_Ai V_c[segment i]."""
    factors = [lowrank_factors(d) for d in deltas]
    Qb, Rb = torch.linalg.qr(torch.cat([b for b, _ in factors], dim=1))  # (n_out, m), (m, R)
    qa = [torch.linalg.qr(a.T) for _, a in factors]  # [(n_in, m_i), (m_i, r_i)]
    core = Rb @ torch.block_diag(*[r.T for _, r in qa])  # (m, sum m_i)
    Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)  # (m, k0), (k0,), (k0, sum m_i)
    k = int((S > rtol * S[0]).sum()) if S.numel() and float(S[0]) > 0 else 0
    U = Qb @ Uc[:, :k]  # (n_out, k)
    Vs, start = [], 0
    for q, _ in qa:
        width = q.shape[1]
        Vs.append(q @ Vch[:k, start:start + width].T)  # (n_in, k)
        start += width
    return U, S[:k], Vs


INNER = Param("inner", str, "ties", "merge applied to the aligned V_i: ties (KnOTS-TIES) or linear (weighted sum)",
              choices=("ties", "linear"))


@register("knots", params=[INNER, DENSITY, MAJORITY, LAMBDA], exact_lowrank=True,
          help="KnOTS (Stoica et al. 2024): joint SVD of the stacked updates, merge the V_i in the shared basis")
def knots(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
          ctx: ModuleContext) -> Delta:
    # align: one SVD of the stacked updates
    U, S, Vs = joint_svd(deltas)
    if S.numel() == 0:  # every input is zero here
        return zero_like(deltas[0])
    # merge in the shared basis: the TIES of analysis.merge.sparsify (trim, then its one consensus kernel)
    if params["inner"] == "ties":
        trimmed = trim_rows(torch.stack(Vs), float(params["density"]))  # (N, n_in, k)
        V = ties_merge(trimmed, weights, str(params["majority_sign"]), 1.0)  # (n_in, k); lambda on U S below
    else:
        V = torch.stack([v * float(w) for v, w in zip(Vs, weights)]).sum(dim=0)  # (n_in, k)
    merged = like(deltas[0], B=(U * S) * float(params["lambda"]), A=V.T.contiguous())  # (n_out, k), (k, n_in)
    return compact(merged)  # k <= n_out may still exceed n_in: the same update at rank <= min(n_out, n_in)
