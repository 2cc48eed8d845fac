"""Linear-family merges: weighted mean, task arithmetic, exact concatenation.

All three compute sum_i c_i dW_i and keep it factored (concatenated factors, rank <= sum of ranks),
so they export to PEFT exactly without `--rank`. They differ in their defaults, which is what users
of each name expect: `linear` averages (weights 1/N), `task_arithmetic` (Ilharco et al. 2023) sums
task vectors and scales by lambda, `cat` is PEFT's `cat` (weights 1, factors concatenated).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from analysis.adapters.model import Delta
from analysis.merge.ops import linear_combination
from analysis.merge.registry import ModuleContext, Param, ParamValue, register

LAMBDA = Param("lambda", float, 1.0, "scale applied to the summed task vectors", low=-10.0, high=10.0)


def weighted_sum(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
                 ctx: ModuleContext) -> Delta:
    """lambda * sum_i w_i dW_i, factors concatenated (lambda 1 for the methods that declare none)."""
    lam = float(params.get("lambda", 1.0))
    # merge
    return linear_combination(deltas, [lam * w for w in weights])


# One function, three registrations: the names differ in their defaults and declared parameters only.
linear = register("linear", help="weighted mean of the updates dW (weights default to 1/N)",
                  default_weight="mean", exact_lowrank=True)(weighted_sum)
task_arithmetic = register("task_arithmetic", params=[LAMBDA], exact_lowrank=True,
                           help="lambda * sum_i w_i dW_i (Ilharco et al. 2023; weights default to 1)")(weighted_sum)
cat = register("cat", exact_lowrank=True,
               help="exact concatenation of the factors [w_i s_i B_i], [A_i]: rank = sum of ranks (PEFT's cat)")(
    weighted_sum)
