"""The one evidence record of a merge: what the CLI writes as preview.json, what the app's proposal
stores, and what the review page and reports read. Plain JSON (a TypedDict: a dict at run time).

Version 2 (`evidence_version: 2`), keyed by input index:

    inputs:   [{index, name, sha256}]                       the merge's inputs, in input order
    tasks:    [{index, name, core_retention, interference, cosine, conflicts, core_size,
                predicted_retention: {value, low, high, scale, residual, basis, spearman_heldout, mae_heldout,
                measured_on, computed_on} | None,       the estimate (analysis.predict) and its track record:
                predicted_retention_data_free?}]        data-light when the merge had prompts (forecast_run),
                                                        the data-free one then kept beside it
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
    measured: (with a measure step) {model: {kind, name, architecture, sha256, revision, ...},
               data: [{task, file, sha256, rows, n, metric, kind}], rows: [{task, metric, n, merged, base, own,
               inputs: [{index, name, value}]}], warnings, protocol}   see `analysis.evaluation.measure`
    decision: (frozen by a proposal) {bar, tolerance, rows: [{method, task, metric, n, merged, own, base,
               own_adapter, retention, low, high, predicted, verdict, sure, note}], text: [...], model, data,
               warnings, interval, nll_retention, methods}          see `analysis.workflow.decision`

Readers also accept the two older shapes: `tasks: {name: {metric: value}}` (review CLI) and
`per_task: {name: {...}}` (the Merge page before version 2).
"""
from __future__ import annotations

from typing import Any, Mapping, NotRequired, Protocol, Sequence, TypedDict

EVIDENCE_VERSION = 2


class EvidenceInput(TypedDict):
    index: int
    name: str
    sha256: str


class EvidenceTask(TypedDict, total=False):
    """One input's preview row: `TASK_METRICS` (None where not measured) and any metric a later version adds."""

    index: int
    name: str
    core_retention: float | None
    predicted_retention: dict[str, Any] | None  # analysis.predict: {value, low, high, basis, track record}
    predicted_retention_data_free: dict[str, Any] | None  # kept when a data-light estimate replaced it
    interference: float | None
    cosine: float | None
    conflicts: int | None
    core_size: int | None


class EvidenceExport(TypedDict, total=False):
    format: str
    rank: int | None
    rank_mode: str
    target_error: float | None
    reached: bool | None
    cap: int | None
    relative_error: float
    worst_module: str | None
    worst_module_error: float


class Evidence(TypedDict):
    """The record, typed: the contract between the CLI (preview.json), the app and the review store. It stays
    plain JSON (a dict at run time). Fields a later version adds are optional (`NotRequired`), so readers
    must use `.get` for them, and a reader of an older record (`task_table`, `export_line`) accepts any
    Mapping."""

    evidence_version: int
    method: str
    parameters: dict[str, Any]
    weights: list[float]
    inputs: list[EvidenceInput]
    settings: dict[str, Any] | None  # {granularity, p, tol, rank} of the preview
    tasks: list[EvidenceTask] | None
    export: EvidenceExport
    extras: dict[str, Any]  # {policy, carried, dropped, kinds}
    method_info: dict[str, Any]
    measured: NotRequired[dict[str, Any]]  # the measure step's block: {model, data, rows, warnings} (`measure_run`)
    modules: NotRequired[dict[str, Any]]  # {policy, rule, total, shared, not_shared}: modules not every input has
    decision: NotRequired[dict[str, Any]]  # the decision table a proposal froze (analysis.workflow.decision)
TASK_METRICS = ("core_retention", "interference", "cosine", "conflicts", "core_size")
# One vocabulary on every face: the record's keys stay as they are (JSON), people read these labels.
METRIC_LABELS = {"core_retention": "core kept", "interference": "interference", "cosine": "cosine",
                 "conflicts": "conflicts", "core_size": "core size"}


def metric_label(key: str) -> str:
    """The on-screen name of a per-task metric key ("core_retention" reads "core kept")."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


METRIC_HELP = {
    "core_retention": "share of the task's core positions whose merged value stays within 25% of its own",
    "interference": "||(dW_merged - dW_t) V_t|| / ||dW_t V_t|| on the task's own inputs (lower is better)",
    "cosine": "cosine between the merged update and the task's own",
    "conflicts": "core positions of this task that another task's core also claims",
    "core_size": "number of core positions of this task",
}


class Merged(Protocol):
    """What the record reads from a merge (`analysis.merge.MergeResult` has it)."""

    method: str
    params: Mapping[str, Any]
    weights: Sequence[float]
    info: Mapping[str, Any]


def build_evidence(*, inputs: Sequence[tuple[str, str]], merge: Merged, preview: Mapping[str, Any] | None,
                   export: Mapping[str, Any], extras: Mapping[str, Any]) -> Evidence:
    """Assemble the record from the inputs' (name, sha256) in input order, the merge, the preview
    (`analysis.preview.preview_merge`'s output: `per_input` in input order; older previews: `per_task` keyed
    by the inputs' unique display names), the export's fidelity and the extras' summary. `merge.info` must
    be JSON-ready already."""
    names = [n for n, _ in inputs]
    tasks: list[EvidenceTask] | None = None
    if preview is not None:
        rows = preview.get("per_input") or [preview["per_task"][n] for n in names]  # by index when available
        tasks = [EvidenceTask(index=i, name=n, **{k: rows[i].get(k) for k in TASK_METRICS},  # type: ignore[typeddict-item]
                              predicted_retention=rows[i].get("predicted_retention"))
                 for i, n in enumerate(names)]
    return Evidence(
        evidence_version=EVIDENCE_VERSION,
        method=merge.method,
        parameters=dict(merge.params),
        weights=[float(w) for w in merge.weights],
        inputs=[EvidenceInput(index=i, name=n, sha256=s) for i, (n, s) in enumerate(inputs)],
        settings=dict(preview["settings"]) if preview is not None else None,
        tasks=tasks,
        export=EvidenceExport(**export),  # type: ignore[typeddict-item]
        extras=dict(extras),
        method_info=dict(merge.info or {}),
    )


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
    rows = [{k: _estimate_value(v) for k, v in t.items()} for t in tasks if isinstance(t, Mapping)]
    metrics = [m for m in TASK_METRICS if any(m in t for t in rows)]
    for t in rows:  # metrics this version does not know, in the order they appear
        metrics += [str(k) for k, v in t.items()
                    if k not in ("index", "name") and str(k) not in metrics and _scalar(v)]
    names = [str(t.get("name", t.get("index", ""))) for t in rows]
    return names, metrics, [[t.get(m) if _scalar(t.get(m)) else None for m in metrics] for t in rows]


def _estimate_value(value: Any) -> Any:
    """A table cell: an estimate record ({value, low, high, ...}: `predicted_retention`) shows its value."""
    return value.get("value") if isinstance(value, Mapping) and "value" in value else value


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


def model_line(measured: Mapping[str, Any] | None) -> str | None:
    """`measured on NAME (kind, architecture, sha256 0123...)`: whose numbers the measured rows are."""
    model = (measured or {}).get("model") if isinstance(measured, Mapping) else None
    if not isinstance(model, Mapping):
        return None
    ident = (f"sha256 {str(model.get('sha256'))[:16]}..." if model.get("sha256")
             else f"revision {model.get('revision') or 'unknown'}")
    return (f"measured on {model.get('name')} ({model.get('kind')}, {model.get('architecture')}, {ident}, "
            f"{model.get('device')} {model.get('dtype')})")


def data_lines(measured: Mapping[str, Any] | None) -> list[str]:
    """One line per data file: task, file, sha256, rows evaluated of rows, metric."""
    data = (measured or {}).get("data") if isinstance(measured, Mapping) else None
    return [f"{d.get('task')}: {d.get('file')} (sha256 {str(d.get('sha256'))[:16]}..., {d.get('n')} of "
            f"{d.get('rows')} rows, {d.get('metric')})" for d in data or [] if isinstance(d, Mapping)]


def measured_table(measured: Mapping[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the measured rows: task, metric, n, merged, base, then one column per input."""
    rows = (measured or {}).get("rows") if isinstance(measured, Mapping) else None
    if not isinstance(rows, list) or not rows:
        return [], []
    inputs = [str(i.get("name")) for i in (rows[0].get("inputs") or []) if isinstance(i, Mapping)]
    header = ["task", "metric", "n", "merged", "base", *inputs]
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            continue
        values = [i.get("value") if isinstance(i, Mapping) else None for i in (r.get("inputs") or [])]
        out.append([r.get("task"), r.get("metric"), r.get("n"), r.get("merged"), r.get("base"),
                    *(values + [None] * (len(inputs) - len(values)))[:len(inputs)]])
    return header, out


def measured_lines(measured: Mapping[str, Any] | None) -> list[str]:
    """The measured block as text lines: model, data files, then the table (exact: accuracy; nll: nats/token)."""
    header, rows = measured_table(measured)
    if not header:
        return []
    lines = [model_line(measured) or "measured", *("data: " + d for d in data_lines(measured))]
    lines += [f"warning: {w}" for w in (measured or {}).get("warnings") or []]
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.append("exact: exact-match accuracy (higher is better); nll: answer NLL in nats per token (lower is better)")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
