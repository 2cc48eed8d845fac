"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference").

Per layer, each task update is decomposed dW_i = U_i S_i V_i^T and (optionally) compressed to its
top singular components; interference is reduced by whitening the concatenated singular vectors:
U = [U_1 .. U_N] is replaced by its closest orthonormal matrix U_perp = P Q^T (Procrustes, from
U = P Sigma Q^T), likewise V, and the merge is U_perp blockdiag(S_i) V_perp^T. Everything is done on
thin (n x K) matrices from the factored SVD, and the result is an exact LowRankDelta of rank K.
The paper keeps 1/N of each task's full-rank spectrum; LoRA updates already have rank r far below
d/N, so the default keeps all of each task's components.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from analysis.adapters.model import Delta
from analysis.merge.ops import compact, like, linear_combination, svds_of
from analysis.merge.registry import ModuleContext, Param, ParamValue, register
from analysis.merge.sparsify import LAMBDA


def nearest_orthonormal(X: torch.Tensor, *, rtol: float = 1e-10) -> torch.Tensor:
    """P Q^T from the thin SVD X = P Sigma Q^T over Sigma > rtol Sigma_1: the polar factor of X (Procrustes).

    With K <= n columns of full rank this is the orthonormal matrix closest to X, the paper's whitening.
    When the columns are dependent (overlapping task subspaces, or K > n: more task vectors than the width)
    no orthonormal n x K matrix exists and the SVD's null directions are arbitrary; keeping only the
    nonzero singular triplets gives the unique partial isometry with X's row and column spaces, so the
    result is well defined and the same whatever SVD routine computed it."""
    P, sig, Qh = torch.linalg.svd(X, full_matrices=False)  # (n, m), (m,), (m, K)
    k = int((sig > rtol * sig[0]).sum()) if sig.numel() and float(sig[0]) > 0 else 0
    return P[:, :k] @ Qh[:k]  # (n, K)


FRACTION = Param("fraction", float, 1.0, "share of each task's singular components kept (TSV-C compression)",
                 low=0.01, high=1.0)


@register("tsv", params=[FRACTION, LAMBDA], exact_lowrank=True,
          help="TSV-Merge (Gargiulo et al. 2025): per-task singular vectors, orthogonalised jointly, then summed")
def tsv(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
        ctx: ModuleContext) -> Delta:
    Us, Ss, Vs = [], [], []
    # task singular vectors, compressed
    for (U, S, V), w in zip(svds_of(deltas), weights):  # (n_out, k), (k,), (n_in, k); zeros dropped
        if S.numel() == 0:
            continue
        k = max(1, round(float(params["fraction"]) * S.numel()))
        Us.append(U[:, :k])
        Ss.append(S[:k] * float(w))
        Vs.append(V[:, :k])
    if not Us:  # every input is zero at this module
        return linear_combination(deltas, [0.0] * len(deltas))
    # orthogonalise across tasks
    U_perp = nearest_orthonormal(torch.cat(Us, dim=1))  # (n_out, K)
    V_perp = nearest_orthonormal(torch.cat(Vs, dim=1))  # (n_in, K)
    # merge
    S = torch.cat(Ss) * float(params["lambda"])  # (K,)
    # K wider than the module: the same update, exactly, at rank <= width
    return compact(like(deltas[0], B=U_perp * S, A=V_perp.T.contiguous()))  # (n_out, K), (K, n_in)
