"""Core rows per task (by |dW| or by task-data saliency) and the row-isolation merge that training starts from.

Cores are output rows (see `analysis.isolation`, granularity `rows`): a row mask keeps a LoRA exactly
factored, which is what lets the frozen cores of `analysis.consolidate.train` be exact. Two scores:
- `magnitude` (the paper's |dW| criterion at row granularity): ||dW[k, :]||^2.
- `saliency` (Wanda-style, Sun et al. 2023: |W_ij| * ||X_j||): sum_j dW[k, j]^2 a_j^2, where a_j is the RMS of
  input feature j over the task's own training prompts, measured with the task's adapter applied. A row
  that is large only on input features the task never excites scores low.
The few row-granularity steps of `analysis.isolation` used here (row energy, top-p, Jaccard, groups, the
claim rules) are restated for rows only, so training does not depend on that module's internal layout.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.consolidate.data import load_rows
from analysis.errors import IncompatibleAdaptersError

log = logging.getLogger(__name__)

SALIENCY_PROMPTS = 32  # training prompts per task for the activation norms

Scores = dict[str, dict[int, torch.Tensor]]  # module -> {input index: (n_out,) row score}


def row_energy(delta: Delta) -> torch.Tensor:
    """||dW[k, :]||^2 for every output row k, (n_out,), from the factors when low rank."""
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, r), (r, n_in)
        return ((b @ (a @ a.T)) * b).sum(dim=1)  # (n_out,)
    return (delta.dense(torch.float64) ** 2).sum(dim=1)  # (n_out,)


def top_fraction(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the ceil(p * n) highest scores (at least one; zero scores never count)."""
    k = min(scores.numel(), max(1, math.ceil(p * scores.numel())))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    idx = torch.topk(scores.reshape(-1), k).indices  # (k,)
    mask[idx] = scores.reshape(-1)[idx] > 0
    return mask.reshape(scores.shape)


def row_jaccard(cores: Mapping[str, Mapping[int, torch.Tensor]], n: int) -> np.ndarray:
    """Jaccard of the tasks' core rows pooled over modules, (n, n): |C_i & C_j| / |C_i | C_j|."""
    inter = np.zeros((n, n))
    for per in cores.values():
        idx = sorted(per)
        masks = torch.stack([per[i] for i in idx]).to(torch.float64)  # (n_present, n_out)
        counts = (masks @ masks.T).numpy()  # (n_present, n_present)
        for a, i in enumerate(idx):
            for b, j in enumerate(idx):
                inter[i, j] += counts[a, b]
    d = np.diag(inter)
    union = d[:, None] + d[None, :] - inter
    return np.divide(inter, union, out=np.eye(n), where=union > 0)


def groups_of(jaccard: np.ndarray, tau: float) -> list[int]:
    """Connected components of 'Jaccard >= tau' (the paper's grouping), labels 0.. in order of first member."""
    n = jaccard.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if jaccard[i, j] >= tau:
                parent[find(i)] = find(j)
    labels: dict[int, int] = {}
    return [labels.setdefault(find(i), len(labels)) for i in range(n)]


def row_coefficients(masks: torch.Tensor, scores: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """(n, n_out) coefficient of each task's row in the merge: transplant, group mean, conflicts, mean blend.

    A row no core claims gets the mean (1/n each); a row one core claims is that task's; several cores of one
    group share it equally; cores of different groups: the largest score wins outright ('magnitude')."""
    n = masks.shape[0]
    m = masks.to(torch.float64)  # (n, n_out)
    claims = m.sum(dim=0)  # (n_out,)
    labels = torch.as_tensor(list(groups))
    n_groups = sum((m[labels == g].sum(dim=0) > 0).to(torch.float64) for g in labels.unique())  # (n_out,)
    M = torch.full_like(m, 1.0 / n) * (claims == 0)  # blend
    M = M + m * ((claims >= 1) & (n_groups <= 1)) / claims.clamp(min=1)  # transplant / group mean
    conflict = n_groups >= 2  # (n_out,)
    if bool(conflict.any()):
        winner = torch.where(masks, scores.to(torch.float64), torch.tensor(-1.0)).argmax(dim=0)  # (n_out,)
        rows = conflict.nonzero().squeeze(1)
        M[winner[rows], rows] = 1.0
    return M


@torch.no_grad()
def input_rms(model: Any, tokenizer: Any, adapter: Adapter, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """RMS of every input feature (n_in,) at each of the adapter's modules, over the prompts' real tokens."""
    from analysis.evaluation.fit import applied_deltas

    sums: dict[str, torch.Tensor] = {}
    count = [0]
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []
    for name in adapter.modules:
        module = model.get_submodule(name)

        def hook(_m: Any, args: tuple, _out: Any, name: str = name) -> None:
            x = args[0].detach().to(torch.float64)  # (b, t, n_in)
            keep = mask_holder["mask"].to(torch.float64).unsqueeze(-1)  # (b, t, 1)
            sums[name] = sums.get(name, 0) + ((x * keep) ** 2).sum(dim=(0, 1))  # (n_in,)

        hooks.append(module.register_forward_hook(hook))
    try:
        with applied_deltas(model, adapter.modules):
            for start in range(0, len(prompts), 8):
                enc = tokenizer(list(prompts[start:start + 8]), return_tensors="pt", padding=True,
                                add_special_tokens=False)
                mask_holder["mask"] = enc["attention_mask"]  # (b, t)
                count[0] += int(enc["attention_mask"].sum())
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    return {name: (s / max(1, count[0])).sqrt().to(torch.float32) for name, s in sums.items()}


def row_scores(adapters: Sequence[Adapter], how: str, *, rms: Sequence[Mapping[str, torch.Tensor]] | None = None
               ) -> Scores:
    """Per module and input, the (n_out,) row score the cores are ranked by."""
    modules = sorted(set().union(*(a.modules for a in adapters)))
    out: Scores = {}
    for m in modules:
        out[m] = {}
        for i, a in enumerate(adapters):
            if m not in a.modules:
                continue
            d = a.modules[m]
            if how == "saliency":
                if rms is None:
                    raise ValueError("saliency cores need the input RMS per task")
                b, A = d.factors(torch.float64) if isinstance(d, LowRankDelta) else (None, None)
                a_j = rms[i][m].to(torch.float64)  # (n_in,)
                if b is not None:
                    d = LowRankDelta(A=A * a_j[None, :], B=b, scale=1.0)  # dW diag(a), still factored
                    out[m][i] = row_energy(d).to(torch.float32)  # (n_out,)
                else:
                    out[m][i] = ((d.dense(torch.float64) * a_j[None, :]) ** 2).sum(dim=1).to(torch.float32)
            else:
                out[m][i] = row_energy(d).to(torch.float32)  # (n_out,)
    return out


def saliency_rms(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str) -> list[dict[str, torch.Tensor]]:
    """Input RMS per task (its own training prompts, its own adapter applied)."""
    out = []
    for a in adapters:
        prompts = [r["prompt"] for r in load_rows(data_dir, a.name, "train")[:SALIENCY_PROMPTS]]
        out.append(input_rms(model, tokenizer, a, prompts))
    return out


def core_rows(scores: Scores, p: float) -> dict[str, dict[int, torch.Tensor]]:
    """The top-p rows of every task at every module (booleans (n_out,)), one module at a time."""
    return {m: {i: top_fraction(s, p) for i, s in per.items()} for m, per in scores.items()}


def isolation_start(adapters: Sequence[Adapter], cores: Mapping[str, Mapping[int, torch.Tensor]], scores: Scores, *,
                    tau: float = 0.1) -> tuple[dict[str, Delta], dict[str, Any]]:
    """The row-isolation merge (cores transplanted, the rest averaged), exactly low rank, and its groups.

    The rules of `analysis.merge` method `isolation` (granularity rows, blend mean, conflict magnitude), with
    the cores given so saliency cores can be used; merged = sum_i (diag(M_i) s_i B_i) A_i, rank sum r_i."""
    jac = row_jaccard(cores, len(adapters))
    groups = groups_of(jac, tau)
    merged: dict[str, Delta] = {}
    for m in sorted(cores):
        idx = sorted(cores[m])
        masks = torch.stack([cores[m][i] for i in idx])  # (n, n_out)
        sc = torch.stack([scores[m][i] for i in idx])  # (n, n_out)
        M = row_coefficients(masks, sc, [groups[i] for i in idx])  # (n, n_out)
        Bs, As = [], []
        for k, i in enumerate(idx):
            d = adapters[i].modules[m]
            if not isinstance(d, LowRankDelta):
                raise IncompatibleAdaptersError(f"module {m} of {adapters[i].name}: consolidation needs LoRA "
                                                "(low-rank) inputs")
            b, a = d.factors(torch.float64)  # (n_out, r), (r, n_in)
            Bs.append(M[k][:, None] * b)
            As.append(a)
        merged[m] = LowRankDelta(A=torch.cat(As, dim=0), B=torch.cat(Bs, dim=1), scale=1.0)  # (R0, n_in), (n_out, R0)
    return merged, {"groups": groups, "jaccard": np.round(jac, 6).tolist()}
