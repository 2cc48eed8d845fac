"""`svd`: re-factor a weighted sum of updates to a chosen rank.

Same result as PEFT's `svd` combination (dense sum, full `torch.linalg.svd`, keep the top `rank`
components), but the SVD is taken of the concatenated factors (QR of B and A^T, SVD of a small core),
which is exact and costs O((n_out + n_in) R^2) instead of O(n_out n_in min(n_out, n_in)).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from analysis.adapters.model import Delta
from analysis.merge.ops import linear_combination, truncate
from analysis.merge.registry import ModuleContext, Param, ParamValue, register

RANK = Param("rank", int, 0, "target rank; 0 = the largest input rank (PEFT's default)", low=0, high=65536)


@register("svd", params=[RANK], exact_lowrank=True,
          help="sum_i w_i dW_i re-factored to `rank` by an exact factored SVD (weights default to 1)")
def svd(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
        ctx: ModuleContext) -> Delta:
    rank = int(params["rank"]) or max(d.rank for d in deltas)
    # combine
    total = linear_combination(deltas, weights)
    # re-factor
    return truncate(total, rank)
