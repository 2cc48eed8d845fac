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
Measured numbers (exact match, answer NLL on a named model and data) are the workflow's measure step
(`analysis.evaluation.Measure`), so the proxies can be checked against them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.isolation import ClaimRuns, Core, claim_runs, column_energy, row_energy, task_core
from analysis.linalg import singular_values
from analysis.merge.claims import task_counts
from analysis.merge.ops import ModuleSpectrum, inner, linear_combination, svd_of, truncate_with_spectrum
from analysis.merge.structured import gather
from analysis.progress import Progress

TOL = 0.25  # core retention: |new - old| <= TOL |old| (implies the sign is kept)


def fidelity_curve(singular_values: Sequence[float] | torch.Tensor, ranks: Sequence[int], *,
                   norm2: float | None = None) -> list[float]:
    """Relative Frobenius error ||dW - dW_r||_F / ||dW||_F of the best rank-r export, for every r in `ranks`.

    From one module's singular values (descending) and its exact energy `norm2` (default: the sum of the
    squared values, right when the spectrum is complete). A rank change is a cumulative sum, never a new
    SVD or a new preview. Ranks beyond the values given report the error of keeping all of them (an
    upper bound when the spectrum is truncated)."""
    s = torch.as_tensor(singular_values, dtype=torch.float64).reshape(-1)  # (k,)
    total = float((s**2).sum()) if norm2 is None else float(norm2)
    if total <= 0.0:
        return [0.0 for _ in ranks]
    kept = torch.cat([torch.zeros(1, dtype=torch.float64), (s**2).cumsum(0)])  # (k + 1,)
    return [math.sqrt(max(total - float(kept[min(max(int(r), 0), s.numel())]), 0.0) / total) for r in ranks]


def export_view(merged: Delta, rank: int | None, spectrum: ModuleSpectrum | None) -> tuple[Delta, ModuleSpectrum | None]:
    """The module as it will be written at `rank` (re-factored when wider), and its spectrum."""
    if rank is None:
        if spectrum is None and isinstance(merged, LowRankDelta):
            S = singular_values(merged)  # (k,)
            spectrum = ModuleSpectrum(S, float((S**2).sum()), True)
        return merged, spectrum
    if isinstance(merged, LowRankDelta) and merged.rank <= rank:
        if spectrum is None:
            S = singular_values(merged)  # (k,)
            spectrum = ModuleSpectrum(S, float((S**2).sum()), True)
        return merged, spectrum
    written, own = truncate_with_spectrum(merged, rank)
    return written, spectrum or own


def _times_v(delta: Delta, V: torch.Tensor) -> torch.Tensor:
    """dW V for a thin V (n_in, k), factored when low rank."""
    if isinstance(delta, LowRankDelta):
        b, a = delta.factors(torch.float64)  # (n_out, R), (R, n_in)
        return b @ (a @ V)  # (n_out, k)
    return delta.dense(torch.float64) @ V  # (n_out, k)


def retention(merged: Delta, task: Delta, core: Core, granularity: str, tol: float,
              merged_at: torch.Tensor | None = None) -> int:
    """Core positions whose merged value stays within tol relative error of the task's own.
    `merged_at`: the merged values at this core's positions, when already read."""
    pos = core.positions
    if granularity == "entries":
        new = gather(merged, pos) if merged_at is None else merged_at  # (k,)
        old = core.value.to(torch.float64) if core.value.numel() == pos.numel() else gather(task, pos)
        return int(((new - old).abs() <= tol * old.abs()).sum())
    diff = linear_combination([merged, task], [1.0, -1.0])
    energy = row_energy if granularity == "rows" else column_energy
    err, mag = energy(diff).clamp(min=0).sqrt()[pos], energy(task).clamp(min=0).sqrt()[pos]
    return int((err <= tol * mag).sum())


def task_geometry(tasks: Sequence[Delta], merged: Delta) -> list[tuple[float, float, float, float]]:
    """Per task (||(dW_m - dW_t) V_t||^2, ||dW_t V_t||^2, <dW_m, dW_t>, ||dW_t||^2), V_t the task's right
    singular vectors. Batched over the tasks (one QR/SVD batch, two thin GEMMs) when they are all LoRAs of
    one rank; one task at a time otherwise. The small modules of the sample set make per-op overhead, not
    flops, the cost, hence the batching."""
    ranks = {d.rank for d in tasks}
    if len(ranks) != 1 or not all(isinstance(d, LowRankDelta) for d in tasks):
        out = []
        for task in tasks:
            U, S, V = svd_of(task)  # (n_out, k), (k,), (n_in, k)
            moved = _times_v(merged, V) - U * S  # (n_out, k): (dW_m - dW_t) V_t
            out.append((float((moved**2).sum()), float((S**2).sum()), inner(merged, task), float((S**2).sum())))
        return out
    n, r = len(tasks), ranks.pop()
    fac = [d.factors(torch.float64) for d in tasks]  # type: ignore[union-attr]
    Bs = torch.stack([b for b, _ in fac])  # (N, n_out, r)
    As = torch.stack([a for _, a in fac])  # (N, r, n_in)
    # factored SVD of every task at once: QR of B and A^T, SVD of the r x r cores
    Qb, Rb = torch.linalg.qr(Bs)  # (N, n_out, r), (N, r, r)
    Qa, Ra = torch.linalg.qr(As.transpose(1, 2))  # (N, n_in, r), (N, r, r)
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.transpose(1, 2))  # (N, r, r), (N, r), (N, r, r)
    keep = S > S[:, :1] * (max(Bs.shape[1], As.shape[2]) * torch.finfo(torch.float64).eps)  # (N, r) as svd_of
    S = S * keep
    U = Qb @ Uc  # (N, n_out, r)
    V = Qa @ Vch.transpose(1, 2)  # (N, n_in, r)
    Vcat = V.transpose(0, 1).reshape(V.shape[1], n * r)  # (n_in, N r)
    Acat = torch.cat(list(As))  # (N r, n_in)
    Bcat = torch.cat(list(Bs), dim=1)  # (n_out, N r)
    if isinstance(merged, LowRankDelta):
        bm, am = merged.factors(torch.float64)  # (n_out, R), (R, n_in)
        MV = bm @ (am @ Vcat)  # (n_out, N r)
        inners = ((bm.T @ Bcat) * (am @ Acat.T)).sum(dim=0)  # (N r,)
    else:
        W = merged.dense(torch.float64)  # (n_out, n_in)
        MV = W @ Vcat  # (n_out, N r)
        inners = (Bcat * (W @ Acat.T)).sum(dim=0)  # (N r,)
    moved = (MV.reshape(-1, n, r).transpose(0, 1) - U * S[:, None, :]) * keep[:, None, :]  # (N, n_out, r)
    num2 = (moved**2).sum(dim=(1, 2))  # (N,)
    den2 = (S**2).sum(dim=1)  # (N,)
    inner_t = inners.reshape(n, r).sum(dim=1)  # (N,)
    return [(float(num2[i]), float(den2[i]), float(inner_t[i]), float(den2[i])) for i in range(n)]


def module_rows(inputs: Sequence[Adapter], module: str, merged: Delta, *, granularity: str, p: float,
                tol: float, cores: Mapping[int, Core] | None = None,
                weights: Sequence[float] | None = None, runs: ClaimRuns | None = None) -> list[dict[str, Any]]:
    """One row per input present at `module`, keyed by input index (names may repeat). A weight-0 input
    keeps its row but is left out of the claims: its positions count as conflicts only where two inputs
    that contribute claim them. `runs`: the claims of the present inputs' entry cores, when the caller
    has them (the isolation merge built them for this module), in the present inputs' order."""
    present = [i for i, a in enumerate(inputs) if module in a.modules]
    tasks = [inputs[i].modules[module] for i in present]
    at: dict[int, Core] = {}
    if runs is None or granularity != "entries":
        at = {i: cores[i] for i in present} if cores is not None else {
            i: task_core(inputs[i].modules[module], granularity, p) for i in present}
        runs = claim_runs([at[i] for i in present])  # every claim in position order, no (N, U) tables
    live = np.array([weights is None or weights[i] != 0.0 for i in present], dtype=bool)  # (N,)
    merged_at = None
    if granularity == "entries":  # the merged values on the union of the cores, read once for every task
        merged_at = gather(merged, torch.from_numpy(runs.positions), torch.float32).numpy()  # (U,)
    sizes, conflicts, kept = task_counts(runs, live, merged_at, tol)  # (N,) each
    if kept is None:
        kept = np.array([retention(merged, tasks[row], at[i], granularity, tol) for row, i in enumerate(present)])
    geometry = task_geometry(tasks, merged)
    merged_norm2 = merged.frobenius_norm() ** 2
    return [{"index": i, "task": inputs[i].name, "module": module, "core": int(sizes[row]),
             "core_kept": int(kept[row]), "conflicts": int(conflicts[row]),
             "interference_num2": geometry[row][0], "interference_den2": geometry[row][1],
             "inner": geometry[row][2], "task_norm2": geometry[row][3], "merged_norm2": merged_norm2}
            for row, i in enumerate(present)]


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


def predicted(rows: Sequence[Mapping[str, Any]], n: int, weights: Sequence[float] | None) -> list[dict[str, Any] | None]:
    """The data-free retention estimate per input (`analysis.predict`), from the inner products the preview already
    pooled: <M, T>, ||T||^2, ||M||^2 over the input's modules. None for a weight-0 input or without a calibration."""
    from analysis.predict import Signal, estimate

    out: list[dict[str, Any] | None] = []
    for i in range(n):
        mine = [r for r in rows if r["index"] == i]
        signal = Signal(sum(r["inner"] for r in mine), sum(r["task_norm2"] for r in mine),
                        sum(r["merged_norm2"] for r in mine))
        pred = None if weights is not None and weights[i] == 0 else estimate(signal, "data-free")
        out.append(pred.record() if pred is not None else None)
    return out


def export_summary(spectra: Mapping[str, ModuleSpectrum | None], rank: int | None, needs_rank: bool) -> dict[str, Any]:
    """Pooled and per-module relative error of the written adapter, and every module's spectrum."""
    if needs_rank:
        return {"rank": None, "relative_error": None, "needs_rank": True, "per_module": {}, "spectra": {}}
    per_module, err2, tot2 = {}, 0.0, 0.0
    for m, spec in sorted(spectra.items()):
        if spec is None:
            continue
        e = spec.relative_error(rank)
        per_module[m] = e
        err2, tot2 = err2 + e * e * spec.norm2, tot2 + spec.norm2
    worst = max(per_module, key=lambda k: per_module[k]) if per_module else None
    return {"rank": rank, "relative_error": math.sqrt(err2 / tot2) if tot2 else 0.0, "needs_rank": False,
            "per_module": per_module, "worst_module": worst,
            "spectra": {m: {"values": [float(v) for v in spec.values], "norm2": spec.norm2, "complete": spec.complete}
                        for m, spec in sorted(spectra.items()) if spec is not None}}


def preview_merge(inputs: Sequence[Adapter], merged: Mapping[str, Delta], *, rank: int | None = None,
                  granularity: str = "entries", p: float = 0.01, tol: float = TOL, cores: Any = None,
                  progress: Progress | None = None, spectra: Mapping[str, ModuleSpectrum] | None = None,
                  weights: Sequence[float] | None = None,
                  precomputed: Mapping[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Every data-free diagnostic of the adapter that will be written, as plain JSON-ready data.

    With `rank`, each module wider than `rank` is re-factored first (exactly when low rank, by the checked
    randomised route otherwise) and core retention, interference and cosine describe that rank-R module;
    `export` gives its fidelity per module and pooled, and each module's singular values so that
    `fidelity_curve` answers any other rank without a new preview. `spectra` (from
    `MergeResult.spectra`) supplies the fidelity of modules the merge already re-factored. `cores`
    (`analysis.isolation.task_cores` or `MergeResult.cores` with the same granularity and p) saves
    recomputing the inputs' cores. `weights`: inputs of weight 0 keep their row but claim no position, so
    they add no conflict to the others. `precomputed`: module -> `module_rows` of the module written at `rank`,
    already computed (while merging, by `analysis.workflow`). Per-task results: `per_task` by name,
    `per_input` in input order."""
    rows: list[dict[str, Any]] = []
    modules = sorted(merged)
    spectra = dict(spectra or {})
    kept: dict[str, ModuleSpectrum | None] = {}
    needs_rank = rank is None and any(not isinstance(d, LowRankDelta) for d in merged.values())
    for step, module in enumerate(modules):
        written, kept[module] = export_view(merged[module], rank, spectra.get(module))
        if precomputed is not None and module in precomputed:
            rows.extend(precomputed[module])
        else:
            rows.extend(module_rows(inputs, module, written, granularity=granularity, p=p, tol=tol,
                                    cores=cores[module] if cores is not None else None, weights=weights))
        if progress is not None:
            progress(step + 1, len(modules), module)
    per_input = [summarize([r for r in rows if r["index"] == i]) for i in range(len(inputs))]
    for i, pred in enumerate(predicted(rows, len(inputs), weights)):
        per_input[i]["predicted_retention"] = pred
    return {"settings": {"granularity": granularity, "p": p, "tol": tol, "rank": rank},
            "per_task": {a.name: per_input[i] for i, a in enumerate(inputs)},
            "per_input": [{"index": i, "name": a.name, **per_input[i]} for i, a in enumerate(inputs)],
            "per_module": rows, "export": export_summary(kept, rank, needs_rank)}
