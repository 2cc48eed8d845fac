"""Data-free merge diagnostics: how much of each task survives a merge, before anyone runs the model.

Per task and module, for any method:
- core retention: share of the task's core positions (top-p entries / rows / columns, as in
  `analysis.isolation`) whose merged value stays within `tol` relative error of the task's own value
  (|new - old| <= tol |old|; for tol < 1 this implies the sign is kept). It asks: is the part of the
  update the task relies on most still there?
- functional interference on the task's own input subspace: ||(dW_merged - dW_t) V_t||_F / ||dW_t V_t||_F,
  V_t the right singular vectors of dW_t. Inputs the task cares about are moved by the merge as the
  task intended (0) or not (1 = as wrong as the update itself). Factored when both are low rank.
- cosine between the merged update and the task's own;
- conflicts: the task's core positions that another task's core also claims;
- export fidelity: relative Frobenius error of the rank-R re-factoring of the merged module.
Pooled per task over modules (sums of counts, energy-weighted ratios) so large modules weigh more.
With the sample set, `real_accuracy` runs `analysis.evaluate.evaluate_deltas` on the merge and on
each input, so the proxies can be checked against real accuracy.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.isolation import Cores, column_energy, core_mask, row_energy
from analysis.merge.ops import inner, linear_combination, relative_truncation_error, svd_of

Progress = Callable[[int, int, str], None]


def position_errors(merged: Delta, task: Delta, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(|new - old|, |old|) per position: entries (n_out, n_in), rows (n_out,) or columns (n_in,)."""
    diff = linear_combination([merged, task], [1.0, -1.0])
    if granularity == "rows":
        return row_energy(diff).clamp(min=0).sqrt(), row_energy(task).clamp(min=0).sqrt()
    if granularity == "columns":
        return column_energy(diff).clamp(min=0).sqrt(), column_energy(task).clamp(min=0).sqrt()
    return diff.dense(torch.float64).abs(), task.dense(torch.float64).abs()


def input_subspace_interference(merged: Delta, task: Delta) -> tuple[float, float]:
    """(||(dW_m - dW_t) V_t||_F^2, ||dW_t V_t||_F^2): the squared numerator and denominator."""
    _, S, V = svd_of(task)  # (k,), (n_in, k)
    diff = linear_combination([merged, task], [1.0, -1.0])
    if isinstance(diff, LowRankDelta):
        b, a = diff.factors(torch.float64)  # (n_out, R), (R, n_in)
        moved = b @ (a @ V)  # (n_out, k)
    else:
        moved = diff.dense(torch.float64) @ V  # (n_out, k)
    return float((moved**2).sum()), float((S**2).sum())


def module_rows(inputs: Sequence[Adapter], module: str, merged: Delta, *, granularity: str, p: float,
                tol: float, cores: Cores | None = None) -> list[dict[str, Any]]:
    present = [a for a in inputs if module in a.modules]
    if cores is not None:
        masks = {inputs[i].name: m for i, m in cores[module].items()}
    else:
        masks = {a.name: core_mask(a.modules[module], granularity, p) for a in present}
    rows = []
    for a in present:
        task = a.modules[module]
        mask = masks[a.name]
        err, mag = position_errors(merged, task, granularity)
        kept = (err <= tol * mag) & mask
        others = torch.zeros_like(mask)
        for name, m in masks.items():
            if name != a.name:
                others |= m
        num2, den2 = input_subspace_interference(merged, task)
        rows.append({"task": a.name, "module": module, "core": int(mask.sum()), "core_kept": int(kept.sum()),
                     "conflicts": int((mask & others).sum()), "interference_num2": num2, "interference_den2": den2,
                     "inner": inner(merged, task), "task_norm2": task.frobenius_norm() ** 2,
                     "merged_norm2": merged.frobenius_norm() ** 2})
    return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    core = sum(r["core"] for r in rows)
    den2 = sum(r["interference_den2"] for r in rows)
    norms = math.sqrt(sum(r["task_norm2"] for r in rows) * sum(r["merged_norm2"] for r in rows))
    return {
        "core_retention": sum(r["core_kept"] for r in rows) / core if core else None,
        "interference": math.sqrt(sum(r["interference_num2"] for r in rows) / den2) if den2 else None,
        "cosine": sum(r["inner"] for r in rows) / norms if norms else None,
        "conflicts": int(sum(r["conflicts"] for r in rows)),
        "core_size": int(core),
    }


def export_fidelity(merged: Mapping[str, Delta], rank: int | None) -> dict[str, Any]:
    """Pooled relative Frobenius error of the rank-R export; dense results without a rank cannot export."""
    dense = [m for m, d in merged.items() if not isinstance(d, LowRankDelta)]
    if rank is None:
        return {"rank": None, "relative_error": 0.0 if not dense else None, "needs_rank": bool(dense),
                "per_module": {}}
    per_module, err2, tot2 = {}, 0.0, 0.0
    for m, d in sorted(merged.items()):
        S = svd_of(d)[1] if isinstance(d, LowRankDelta) else torch.linalg.svdvals(d.dense(torch.float64))  # (k,)
        e = relative_truncation_error(S, rank)
        per_module[m] = e
        n2 = float((S**2).sum())
        err2, tot2 = err2 + e * e * n2, tot2 + n2
    return {"rank": rank, "relative_error": math.sqrt(err2 / tot2) if tot2 else 0.0, "needs_rank": False,
            "per_module": per_module}


def preview_merge(inputs: Sequence[Adapter], merged: Mapping[str, Delta], *, rank: int | None = None,
                  granularity: str = "entries", p: float = 0.01, tol: float = 0.25, cores: Cores | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Every data-free diagnostic of one merge result, as plain JSON-ready data.

    `cores` (from `analysis.isolation.task_cores` with the same granularity and p) saves recomputing
    the inputs' core masks when several methods are previewed against the same inputs."""
    rows: list[dict[str, Any]] = []
    modules = sorted(merged)
    for i, module in enumerate(modules):
        rows.extend(module_rows(inputs, module, merged[module], granularity=granularity, p=p, tol=tol, cores=cores))
        if progress is not None:
            progress(i + 1, len(modules), module)
    per_task = {a.name: summarize([r for r in rows if r["task"] == a.name]) for a in inputs}
    fidelity = export_fidelity(merged, rank)
    return {"settings": {"granularity": granularity, "p": p, "tol": tol, "rank": rank},
            "per_task": per_task, "per_module": rows, "export": fidelity}


def real_accuracy(merged: Mapping[str, Delta], inputs: Sequence[Adapter], tasks: Sequence[str], *,
                  limit: int | None = None, individual: bool = True, model: Any = None, tokenizer: Any = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Real per-task accuracy of the merge, and (optionally) of each input adapter, on the sample set.

    Calls `analysis.evaluate.evaluate_deltas` on the sample base model (loaded once, cached)."""
    from analysis.evaluate import evaluate_deltas

    if model is None or tokenizer is None:
        from analysis.base_model import load_base_model

        model, tokenizer = load_base_model()

    def acc(deltas: Mapping[str, Delta]) -> dict[str, float]:
        res = evaluate_deltas(model, tokenizer, deltas, list(tasks), limit=limit, progress=progress)
        return {t: float(r["accuracy"]) for t, r in res.items()}

    out: dict[str, Any] = {"limit": limit, "merged": acc(merged)}
    if individual:
        out["individual"] = {a.name: acc(a.modules) for a in inputs}
    return out
