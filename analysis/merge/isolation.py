"""`isolation`: transplant each task's core parameters, blend the rest (Wang, Liang & Peng, EMNLP 2025).

Pipeline, once for the whole merge then per module:
  # cores and groups (prepare): top-p cores per module, Jaccard of cores pooled over modules, groups
    = connected components of Jaccard >= tau (or the groups the user gives);
  # blend: coefficients for positions no core claims: plain mean (default, measured best here), SLERP
    (Karcher mean of the directions, the paper's choice), or sum (task arithmetic); times `lambda`;
  # transplant: a position claimed by one core takes that task's value, unscaled;
  # group mean: a position claimed by several cores of one group takes their mean (grouped tasks are
    similar by construction, averaging them is what joint training of the group would approximate);
  # resolve conflicts: cores of different groups claiming one position -> policy 'magnitude' (larger
    |dW| or row/column energy wins) or 'mean'; counted per module in `MergeResult.info`.
For `rows`/`columns` the maps are per row/column, so the result is exactly sum_i (D_i s_i B_i) A_i
(or B_i (A_i D_i)): a LowRankDelta of rank <= sum of ranks. For `entries` it is the low-rank blend plus a
sparse correction on the cores (`SparsePlusLowRank`): a DenseDelta when materialised, or re-factored to
the export rank without ever being formed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.isolation import GRANULARITIES, Core, Cores, claim_runs, core_overlap, importance, task_cores
from analysis.merge.claims import ClaimStats, coefficient_maps, merged_values, parse_groups, task_groups
from analysis.merge.ops import dense, gram, like, linear_combination, scaled_factors
from analysis.merge.registry import ModuleContext, Param, ParamValue, register
from analysis.merge.slerp import multislerp_coefficients
from analysis.merge.structured import SparsePlusLowRank

PARAMS = [
    Param("p", float, 0.01, "core fraction per task and module (paper default 1%)", low=1e-5, high=1.0),
    Param("granularity", str, "entries", "core unit: entries of |dW| (paper), or output rows / input columns "
          "by energy (exactly low rank)", choices=GRANULARITIES),
    Param("tau", float, 0.1, "Jaccard threshold for grouping tasks (paper default 0.1)", low=0.0, high=1.0),
    Param("groups", str, "", "group label per input, e.g. 0,0,1; empty = connected components of Jaccard >= tau"),
    # Default `mean`, not the paper's SLERP: measured on the sample set (bench/results_sample_merge.json),
    # mean blending beat SLERP on every 2-task merge tried (SLERP of near-orthogonal LoRA updates keeps ~0.71
    # of each instead of 0.5, and the extra magnitude is interference); on the 10-task merge both stay near
    # the base model (mean retention 0.131 vs 0.138).
    Param("blend", str, "mean", "how non-core positions are combined: mean (measured best on the sample set), "
          "slerp (spherical mean, the paper's choice), or sum (task arithmetic: equal weights count 1 each)",
          choices=("slerp", "mean", "sum")),
    # Scales only what the blend gives the free positions; cores keep full strength. With blend=sum this is
    # task arithmetic's lambda outside the cores, the fair comparison with a scaled task_arithmetic/ties.
    Param("lambda", float, 1.0, "scale of the blended (non-core) coefficients; cores stay transplanted at full "
          "strength (with blend=sum: task arithmetic's lambda off the cores)", low=0.0, high=10.0),
    Param("conflict", str, "magnitude", "two groups' cores on one position: larger magnitude wins, or their mean",
          choices=("magnitude", "mean")),
]


@dataclass
class IsolationPlan:
    """What `prepare` decides once for all modules; `stats` collects per-module claim counts.

    Weight-0 inputs take no part in the merge: they get group -1, claim no position and are never
    transplanted (their Jaccard row is still reported, for the record)."""

    groups: np.ndarray  # (N,) group label per input, -1 for weight-0 inputs
    jaccard: np.ndarray  # (N, N)
    cores: Cores  # sparse cores of every input at every module (the merge and the preview reuse them)
    granularity: str = "entries"
    p: float = 0.01
    stats: dict[str, ClaimStats] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        tot = {k: sum(getattr(s, k) for s in self.stats.values())
               for k in ("positions", "sole", "shared_in_group", "conflicts", "blended")}
        return {"groups": self.groups.tolist(), "jaccard": np.round(self.jaccard, 6).tolist(), "claims": tot,
                "conflicts_per_module": {m: s.conflicts for m, s in sorted(self.stats.items())}}


def plan_isolation(adapters: Sequence[Adapter], weights: Sequence[float], params: Mapping[str, ParamValue],
                   cores: Cores | None = None) -> IsolationPlan:
    # cores (one dense pass per input and module, kept sparse; reused when the caller computed them with
    # these settings: `merge_adapters` hands over only cores of this method's settings) and groups over the
    # weighted inputs
    granularity, p = str(params["granularity"]), float(params["p"])
    reuse = cores is not None and _covers(cores, adapters, granularity)
    own = cores if reuse and cores is not None else task_cores(adapters, granularity=granularity, p=p)
    overlap = core_overlap(adapters, granularity=granularity, p=p, cores=own)
    active = np.array([float(w) != 0.0 for w in weights])
    given = parse_groups(str(params["groups"]), len(adapters))
    groups = np.full(len(adapters), -1)
    if given is not None:
        groups[active] = given[active]
    elif active.any():
        groups[active] = task_groups(overlap.jaccard[np.ix_(active, active)], float(params["tau"]))
    return IsolationPlan(groups=groups, jaccard=overlap.jaccard, cores=own, granularity=granularity, p=p)


def _covers(cores: Cores, adapters: Sequence[Adapter], granularity: str) -> bool:
    """Whether precomputed cores hold every input's core (a `Core` with its values) at every module it has,
    of that module's shape."""
    for i, a in enumerate(adapters):
        for m, d in a.modules.items():
            core = cores.get(m, {}).get(i)
            want = {"rows": d.shape[:1], "columns": d.shape[1:]}.get(granularity, d.shape)
            if not isinstance(core, Core) or core.value.numel() != core.index.numel() or tuple(core.shape) != tuple(want):
                return False  # bare masks carry no values: the merge computes its own cores
    return True


def blend_coefficients(deltas: Sequence[Delta], weights: Sequence[float], how: str) -> torch.Tensor:
    """(N,) coefficients for non-core positions."""
    n = len(deltas)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)  # (N,)
    if how == "slerp":
        return multislerp_coefficients(gram(deltas), (w / w.sum()).tolist() if float(w.sum()) else [1.0 / n] * n)
    if how == "mean":
        return w / w.sum() if float(w.sum()) else torch.full((n,), 1.0 / n, dtype=torch.float64)
    # sum (task arithmetic): weights rescaled so equal weights give 1 each, whatever their normalisation
    return w / w.mean() if float(w.mean()) else torch.ones(n, dtype=torch.float64)


@register("isolation", params=PARAMS, default_weight="mean", prepare=plan_isolation, cores=True,
          exact_lowrank=lambda params: params["granularity"] != "entries",
          help="core-parameter isolation (Wang et al. 2025): transplant each task's top-p core, blend the rest")
def isolation(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
              ctx: ModuleContext) -> Delta | SparsePlusLowRank:
    plan: IsolationPlan = ctx.shared
    granularity = str(params["granularity"])
    cores = [plan.cores[ctx.module][i] for i in ctx.indices]
    groups = [int(plan.groups[i]) for i in ctx.indices]
    # blend
    blend = blend_coefficients(deltas, weights, str(params["blend"])) * float(params["lambda"])  # (N,)
    if granularity == "entries":
        return entry_merge(deltas, cores, groups, blend, str(params["conflict"]), plan, ctx.module)
    # transplant, group mean, resolve conflicts (row / column maps are small: dense masks are fine)
    masks = torch.stack([c.mask() for c in cores])  # (N, n) bool
    scores = torch.stack([importance(d, granularity).to(torch.float32) for d in deltas])  # (N, n)
    M, stats = coefficient_maps(masks, scores, groups, blend, str(params["conflict"]))
    plan.stats[ctx.module] = stats
    return rowcol_merge(deltas, M.to(torch.float64), granularity)


def entry_merge(deltas: Sequence[Delta], cores: Sequence[Core], groups: Sequence[int], blend: torch.Tensor,
                policy: str, plan: IsolationPlan, module: str) -> SparsePlusLowRank:
    """sum_i blend_i dW_i off the cores, the coefficient maps on them, without forming dW.

    Only the claimed positions (the union of the cores) differ from the blend, and there every claimant's
    value is in its sparse core, so the result is the exact low-rank blend plus a sparse correction."""
    runs = claim_runs(cores)  # every claim in position order: O(sum of core sizes), no (N, U) tables
    # transplant, group mean, resolve conflicts: the maps of the dense route, on claimed positions only
    target, sole, shared, conflicts = merged_values(runs, groups, policy)  # (U,) merged value there
    total = int(np.prod(deltas[0].shape))
    plan.stats[module] = ClaimStats(total, sole, shared, conflicts, total - int(runs.positions.size))
    # blend everywhere (exactly low rank for LoRA inputs), corrected on the claimed positions
    base = linear_combination(deltas, blend.tolist())
    return SparsePlusLowRank(base, torch.from_numpy(runs.positions), target, claims=runs)


def rowcol_merge(deltas: Sequence[Delta], M: torch.Tensor, granularity: str) -> Delta:
    """sum_i diag(M_i) dW_i (rows) or sum_i dW_i diag(M_i) (columns), exactly low rank when inputs are."""
    if all(isinstance(d, LowRankDelta) for d in deltas):
        Bs, As = [], []
        for i, d in enumerate(deltas):
            b, a = scaled_factors(d)  # type: ignore[arg-type]  # (n_out, r), (r, n_in)
            if granularity == "rows":
                b = M[i][:, None] * b  # (n_out, r): D_i (s B_i)
            else:
                a = a * M[i][None, :]  # (r, n_in): A_i D_i
            Bs.append(b)
            As.append(a)
        return like(deltas[0], B=torch.cat(Bs, dim=1), A=torch.cat(As, dim=0))  # (n_out, R), (R, n_in)
    axis = (slice(None), None) if granularity == "rows" else (None, slice(None))
    W = sum(M[i][axis].float() * dense(d) for i, d in enumerate(deltas))  # (n_out, n_in)
    return like(deltas[0], W=W)
