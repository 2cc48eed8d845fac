"""Entry-wise sparsifying merges: TIES, DARE (linear and TIES), magnitude pruning: one pipeline.

These act on individual entries of dW, so they densify one module at a time and return a
DenseDelta (export to PEFT/kohya then needs `--rank`). Each step is a small pure function named
after the paper's phase; a method is a pipeline of them.
- TIES-Merging (Yadav et al., NeurIPS 2023): trim each task vector to its top-k magnitudes, elect a
  sign per entry, average only the entries that agree with it (disjoint mean).
- DARE (Yu et al., ICML 2024, "Language Models are Super Mario"): drop entries at random with rate p
  and rescale the survivors by 1/(1-p), so each task vector is preserved in expectation.

Weighting rule (one, for TIES, DARE-TIES and KnOTS-TIES): mergekit's, from
`mergekit/merge_methods/generalized_task_arithmetic.py` (arcee-ai/mergekit): each trimmed task vector is
multiplied by its weight *before* the sign election (`weighted_deltas = deltas * weights`, then
`get_mask(weighted_deltas, method="sum"|"count")`), and the disjoint merge divides the weighted sum of the
agreeing entries by the *sum of the agreeing tasks' weights* (`divisor = (weights * mask).sum(0)`, 0 -> 1),
then multiplies by lambda. So weight 0 casts no vote and adds nothing to either sum (no contribution),
equal weights give the plain disjoint mean of the TIES paper whatever their value, and unequal weights
give a weighted mean of the agreeing entries. PEFT's `utils/merge_utils.py` differs: it elects signs on
the unweighted tensors and divides by the *count* of agreeing tasks, so a weight scales the result and a
weight-0 task still votes; we do not follow it (the two agree when every weight is 1).
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Delta, LowRankDelta
from analysis.merge.ops import DENSE_DTYPE, dense, like
from analysis.merge.registry import ModuleContext, Param, ParamValue, register

DENSITY = Param("density", float, 0.2, "fraction of each task vector's entries kept (TIES paper: top 20%)",
                low=0.0, high=1.0)
MAJORITY = Param("majority_sign", str, "total", "elect the sign by summed mass (total) or by vote count (frequency)",
                 choices=("total", "frequency"))
LAMBDA = Param("lambda", float, 1.0, "scale applied to the merged task vector", low=-10.0, high=10.0)
DROP = Param("drop_rate", float, 0.5, "DARE drop probability p per entry (paper uses up to 0.9 on full fine-tunes; "
             "LoRA updates are less redundant, hence a milder default)", low=0.0, high=0.99)
SEED = Param("seed", int, 0, "seed of the random drop masks (per module and input, so results are reproducible)",
             low=0, high=2**31 - 1)
RESCALE = Param("rescale", bool, True, "rescale kept entries by 1/(1-p) to preserve each task vector in expectation")


def trim_rows(stacked: torch.Tensor, density: float) -> torch.Tensor:
    """TIES 'trim' of every task at once, in place: stacked (N, ...) float32/64 keeps, per task, its
    k = int(density * numel) largest-magnitude entries (mergekit's k) and is zeroed elsewhere.

    One threshold per task from a linear-time selection (numpy's introselect over the N rows together),
    then one comparison pass; the few tasks with several entries equal to their threshold keep the first
    ones in position order, so each keeps exactly k (a top-k breaks ties arbitrarily; this way is also
    deterministic). Entries equal to a zero threshold are zeros either way."""
    stacked = stacked.contiguous()  # the work below is in place on this tensor, which is returned
    n = stacked.shape[0]
    flat = stacked.view(n, -1)  # (N, m) a view
    m = flat.shape[1]
    k = int(density * m)
    if density >= 1.0 or n == 0 or m == 0:
        return stacked
    if k <= 0:
        return stacked.zero_()
    values = flat.numpy()  # (N, m) a view (numpy's float kernels; torch's boolean ones are slow here)
    mag = np.abs(values)  # (N, m)
    mag.partition(m - k, axis=1)  # in place (no second (N, m) buffer): introselect per task
    kth = mag[:, m - k].copy()  # (N,) k-th largest magnitude per task
    np.abs(values, out=mag)  # the magnitudes again, in the same (already touched) buffer
    keep = mag >= kth[:, None]  # (N, m)
    extra = np.count_nonzero(keep, axis=1) - k  # (N,) entries tied at the threshold beyond k
    for row in np.flatnonzero((extra > 0) & (kth > 0)):
        ties = np.flatnonzero(mag[row] == kth[row])  # (t,) in position order
        keep[row, ties[len(ties) - int(extra[row]):]] = False
    np.multiply(values, keep, out=values)
    return stacked


def stacked_dense(deltas: Sequence[Delta]) -> torch.Tensor:
    """(N, n_out, n_in) DENSE_DTYPE tensors of the inputs, one batched GEMM when they are LoRAs of one rank."""
    if len({d.rank if isinstance(d, LowRankDelta) else -1 for d in deltas}) == 1 and isinstance(deltas[0], LowRankDelta):
        Bs = torch.stack([d.B.to(DENSE_DTYPE) * float(d.scale) for d in deltas])  # type: ignore[union-attr]
        As = torch.stack([d.A.to(DENSE_DTYPE) for d in deltas])  # type: ignore[union-attr]  # (N, r, n_in)
        return torch.bmm(Bs, As)  # (N, n_out, n_in)
    return torch.stack([dense(d) for d in deltas])


def ties_merge(stacked: torch.Tensor, weights: Sequence[float], majority: str, lam: float) -> torch.Tensor:
    """The one TIES consensus kernel: weight, elect sign and take the disjoint mean (mergekit's rule) of
    sparsified tasks (N, ...), in place, in float passes only (torch's boolean kernels are several times
    slower than its float ones on these sizes). Used by TIES, DARE-TIES and KnOTS-TIES.

    With e = +-1 the elected sign, P = max(e * x_i, 0) is |x_i| where task i agrees and 0 elsewhere, so the
    weighted sum of the agreeing entries is e * sum_i P_i and their summed weight is sum_i w_i sign(P_i)."""
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype)  # (N,)
    equal = bool((w == w[0]).all()) and float(w[0]) > 0  # equal weights (the default): the plain mean
    if not equal:
        stacked.mul_(w.reshape((-1,) + (1,) * (stacked.dim() - 1)))  # weighted task vectors
    votes = stacked.sum(dim=0) if majority == "total" else stacked.sign().sum(dim=0)  # (...)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)  # (...) ties at zero go to +
    agreeing = stacked.mul_(elected).clamp_(min=0)  # (N, ...) |x_i| where task i agrees, else 0
    merged = agreeing.sum(dim=0).mul_(elected)  # (...)
    agreeing.sign_()  # (N, ...) 1 where task i agrees, else 0 (in place: no new (N, ...) buffer)
    if equal:  # sum_i w x_i over the agreeing / (w * their count) = their plain mean
        divisor = agreeing.sum(dim=0)  # (...) how many tasks agree
    else:
        divisor = torch.tensordot(w, agreeing, dims=1)  # (...) summed weight of the agreeing tasks
    return merged.div_(torch.where(divisor == 0, torch.ones_like(divisor), divisor)).mul_(lam)


def random_drop(task: torch.Tensor, drop_rate: float, generator: torch.Generator, *, rescale: bool) -> torch.Tensor:
    """Zero each entry with probability drop_rate; optionally rescale survivors by 1/(1-p) (DARE)."""
    if drop_rate <= 0.0:
        return task
    keep = torch.rand(task.shape, generator=generator) >= drop_rate  # (n_out, n_in) bool
    out = task * keep
    return out / (1.0 - drop_rate) if rescale else out


def drop_generator(seed: int, module: str, index: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, module name, input index), not on call order."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(module.encode()) * 31 + index) % 2**63)


# ----------------------------------------------------------------------------- one pipeline, four methods
# mergekit's generalized task arithmetic: sparsify each task vector -> (optionally) elect a sign per entry
# -> combine (the disjoint mean of the agreeing entries, or the weighted sum) -> scale by lambda.
SPARSIFY = ("magnitude", "random")


def sparsify(deltas: Sequence[Delta], how: str, params: Mapping[str, ParamValue], ctx: ModuleContext) -> torch.Tensor:
    """(N, n_out, n_in) sparsified task vectors: top-density by magnitude (TIES' trim, every task at once, in
    place), or a random drop at rate p rescaled by 1/(1-p) (DARE), seeded per module and input."""
    if how == "magnitude":
        return trim_rows(stacked_dense(deltas), float(params["density"]))
    p, seed, rescale = float(params["drop_rate"]), int(params["seed"]), bool(params["rescale"])
    return torch.stack([random_drop(dense(d), p, drop_generator(seed, ctx.module, i), rescale=rescale)
                        for d, i in zip(deltas, ctx.indices)])


def combine(tasks: torch.Tensor, weights: Sequence[float], params: Mapping[str, ParamValue], *,
            consensus: bool) -> torch.Tensor:
    """The merged task vector: TIES consensus (`ties_merge`), or lambda * the weighted sum."""
    if consensus:
        return ties_merge(tasks, weights, str(params["majority_sign"]), float(params["lambda"]))
    weighted = torch.stack([t * float(w) for t, w in zip(tasks, weights)])  # (N, n_out, n_in)
    return weighted.sum(dim=0) * float(params["lambda"])


def task_arithmetic_pipeline(how: str, *, consensus: bool):  # noqa: ANN201 - a registered merge function
    """One merge function: `sparsify(how)` -> `combine(consensus)`, returning a dense result."""
    if how not in SPARSIFY:
        raise ValueError(f"sparsify '{how}' is not one of {SPARSIFY}")

    def merge(deltas: Sequence[Delta], weights: Sequence[float], params: Mapping[str, ParamValue],
              ctx: ModuleContext) -> Delta:
        # sparsify
        tasks = sparsify(deltas, how, params, ctx)  # (N, n_out, n_in)
        # elect sign (on the weighted task vectors) and combine, or combine
        return like(deltas[0], W=combine(tasks, weights, params, consensus=consensus))  # (n_out, n_in)

    return merge


ties = register("ties", params=[DENSITY, MAJORITY, LAMBDA],
                help="TIES (Yadav et al. 2023): trim to top density, elect sign on weighted vectors, weighted "
                     "disjoint mean (mergekit's rule); dense result")(
    task_arithmetic_pipeline("magnitude", consensus=True))
magnitude_prune = register("magnitude_prune", params=[DENSITY, LAMBDA],
                           help="trim each update to its top density by magnitude, then lambda * weighted sum; "
                                "dense result")(task_arithmetic_pipeline("magnitude", consensus=False))
dare_linear = register("dare_linear", params=[DROP, SEED, RESCALE, LAMBDA],
                       help="DARE (Yu et al. 2024): random drop with rate p, rescale by 1/(1-p), lambda * weighted "
                            "sum; dense")(task_arithmetic_pipeline("random", consensus=False))
dare_ties = register("dare_ties", params=[DROP, SEED, RESCALE, MAJORITY, LAMBDA],
                     help="DARE drop and rescale, then TIES sign election and disjoint mean; dense result")(
    task_arithmetic_pipeline("random", consensus=True))
