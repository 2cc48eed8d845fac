"""The one evidence record of a merge: what the CLI writes as preview.json, what the app's proposal
stores, and what the review page and reports read. Plain JSON, no torch import (the review store reads it).

Version 2 (`evidence_version: 2`), keyed by input index:

    inputs:   [{index, name, sha256}]                       the merge's inputs, in input order
    tasks:    [{index, name, core_retention, interference, cosine, conflicts, core_size}]
    settings: {granularity, p, tol, rank}                    the cores the preview used, the rank it describes
    export:   {format, rank, rank_mode, target_error, reached, cap, relative_error, worst_module,
               worst_module_error, dtype, storage_error, worst_storage_module, worst_storage_error,
               wider_than_dense}
                                                            fidelity of the adapter written (truncation;
                                                            storage in its dtype, as its readers compute it)
    extras:   {policy, carried, dropped, kinds}
    modules:  {policy, rule, total, shared, not_shared: [{module, lacking}], left_out_energy?}
                                                            modules not every input has, and the rule applied
    method, parameters, weights, method_info

Readers also accept the two older shapes: `tasks: {name: {metric: value}}` (review CLI) and
`per_task: {name: {...}}` (the Merge page before version 2).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

EVIDENCE_VERSION = 2
TASK_METRICS = ("core_retention", "interference", "cosine", "conflicts", "core_size")
METRIC_HELP = {
    "core_retention": "share of the task's core positions whose merged value stays within 25% of its own",
    "interference": "||(dW_merged - dW_t) V_t|| / ||dW_t V_t|| on the task's own inputs (lower is better)",
    "cosine": "cosine between the merged update and the task's own",
    "conflicts": "core positions of this task that another task's core also claims",
    "core_size": "number of core positions of this task",
}


def build_evidence(*, names: Sequence[str], sha256s: Sequence[str], method: str, parameters: Mapping[str, Any],
                   weights: Sequence[float], preview: Mapping[str, Any] | None, export: Mapping[str, Any],
                   extras: Mapping[str, Any], method_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the record; `preview` is `analysis.preview.preview_merge`'s output (`per_input` in input
    order; older previews: `per_task` keyed by the inputs' unique display names)."""
    tasks = None
    if preview is not None:
        rows = preview.get("per_input") or [preview["per_task"][n] for n in names]  # by index when available
        tasks = [{"index": i, "name": n, **{k: rows[i].get(k) for k in TASK_METRICS}} for i, n in enumerate(names)]
    return {
        "evidence_version": EVIDENCE_VERSION,
        "method": method,
        "parameters": dict(parameters),
        "weights": [float(w) for w in weights],
        "inputs": [{"index": i, "name": n, "sha256": s} for i, (n, s) in enumerate(zip(names, sha256s))],
        "settings": dict(preview["settings"]) if preview is not None else None,
        "tasks": tasks,
        "export": dict(export),
        "extras": dict(extras),
        "method_info": dict(method_info or {}),
    }


def task_table(evidence: Mapping[str, Any] | None) -> tuple[list[str], list[str], list[list[Any]]]:
    """(task names, metric names, rows) of the per-task preview, whatever version wrote it."""
    if not isinstance(evidence, Mapping):
        return [], [], []
    tasks = evidence.get("tasks")
    if tasks is None:
        tasks = evidence.get("per_task")  # the Merge page before version 2
    if isinstance(tasks, Mapping):  # version 1: {name: {metric: value}}
        tasks = [{"name": str(n), **(v if isinstance(v, Mapping) else {})} for n, v in tasks.items()]
    if not isinstance(tasks, list):
        return [], [], []
    rows = [t for t in tasks if isinstance(t, Mapping)]
    metrics = [m for m in TASK_METRICS if any(m in t for t in rows)]
    for t in rows:  # metrics this version does not know, in the order they appear
        metrics += [str(k) for k, v in t.items()
                    if k not in ("index", "name") and str(k) not in metrics and _scalar(v)]
    names = [str(t.get("name", t.get("index", ""))) for t in rows]
    return names, metrics, [[t.get(m) if _scalar(t.get(m)) else None for m in metrics] for t in rows]


def export_line(evidence: Mapping[str, Any] | None) -> str | None:
    """One sentence on the adapter written: format, rank (and how it was chosen), its fidelity."""
    export = (evidence or {}).get("export") if isinstance(evidence, Mapping) else None
    if not isinstance(export, Mapping) or not export.get("format"):
        return None
    fmt, rank, mode = export.get("format"), export.get("rank"), export.get("rank_mode")
    stored = _stored(export)
    if fmt == "delta" or mode == "exact" or rank is None:
        return f"export: {fmt}, exact (no re-factoring), relative error 0{stored}"
    err = export.get("relative_error")
    how = {"auto": f"automatic: smallest rank with relative error <= {export.get('target_error')}",
           "fixed": "chosen by the user"}.get(str(mode), str(mode))
    line = f"export: {fmt} at rank {rank} ({how}); relative Frobenius error {_num(err)}"
    if export.get("worst_module"):
        line += f", worst module {export['worst_module']} {_num(export.get('worst_module_error'))}"
    if mode == "auto" and export.get("reached") is False:
        line += f"; the target is not reached at the cap (summed input rank {export.get('cap')})"
    return line + stored


def module_line(evidence: Mapping[str, Any] | None) -> str | None:
    """One sentence on the modules not every input has and the rule applied to them (None for older records)."""
    policy = (evidence or {}).get("modules") if isinstance(evidence, Mapping) else None
    if not isinstance(policy, Mapping) or "not_shared" not in policy:
        return None
    missing = policy["not_shared"]
    if not missing:
        return f"modules: all {policy.get('total')} modules are shared by every input"
    listing = ", ".join(m["module"] for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    lacking = sorted({n for m in missing for n in m["lacking"]})
    return (f"modules: {len(missing)} of {policy.get('total')} not shared by every input ({listing}; lacking in "
            f"{', '.join(lacking)}): {policy.get('rule')} (missing-modules rule: {policy.get('policy')})")


def _stored(export: Mapping[str, Any]) -> str:
    """'; stored as fp16: storage error 2.1e-04 (worst module ...)' when the record has it."""
    if export.get("storage_error") is None:
        return ""
    worst = export.get("worst_storage_module")
    tail = f" (worst module {worst} {export.get('worst_storage_error', 0.0):.1e})" if worst else ""
    wider = export.get("wider_than_dense") or 0
    size = (f"; {wider} modules hold more numbers at this rank than their dense dW (--format delta is smaller "
            "and exact)") if wider else ""
    return f"; stored as {export.get('dtype')}: storage error {export['storage_error']:.1e}{tail}{size}"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None
