"""The measurements a review shows next to a recipe: input overlap and the merge preview.

Overlap is recomputed from the recipe's input paths when they still exist and load, and each
input's sha256 is checked against the recipe, because a reviewer approving a merge should see the
adapters the recipe names, not whatever now sits at that path. When the inputs are gone (another
machine, a deleted checkout) the report says so instead of failing. The preview is the snapshot
taken when the proposal was opened.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from analysis.errors import AtlasError
from analysis.review.models import InputRecord, Proposal
from analysis.workflow.evidence import data_lines, export_line, measured_table, model_line, task_table

# (metric passed to analysis.overlap.aggregate, heading shown to reviewers)
OVERLAP_METRICS: tuple[tuple[str, str], ...] = (
    ("cosine", "cosine similarity of the updates (whole adapters)"),
    ("subspace_similarity", "output-subspace similarity (Hu et al.), energy-weighted mean over modules"),
    ("energy_overlap", "share of the row adapter's energy inside the column adapter's column space"),
)


@dataclass(frozen=True)
class HashCheck:
    name: str
    path: str
    recorded: str
    found: str | None  # None when the input could not be read

    @property
    def matches(self) -> bool:
        return self.found is not None and self.found == self.recorded


@dataclass(frozen=True)
class InputOverlap:
    """Aggregated all-pairs overlap of a proposal's inputs, or the reason it is not available."""

    available: bool
    reason: str = ""
    labels: tuple[str, ...] = ()
    matrices: Mapping[str, np.ndarray] = field(default_factory=dict)  # metric -> (N, N)
    hashes: tuple[HashCheck, ...] = ()
    n_modules: int = 0


def resolve_input(record: InputRecord, source_dir: str | None) -> Path | None:
    """The input's path: absolute as written, else beside the recipe, else relative to the cwd."""
    written = Path(record.path).expanduser()
    candidates = [written] if written.is_absolute() else (
        ([Path(source_dir) / written] if source_dir else []) + [written])
    return next((c for c in candidates if c.exists()), None)


def input_overlap(proposal: Proposal, *,
                  progress: Callable[[int, int, str], None] | None = None) -> InputOverlap:
    """Load the recipe's inputs and aggregate their per-module overlap; never raises for missing data.

    `progress(done, total, module)` is passed on to `overlap_table` for a progress bar.
    """
    paths: list[Path] = []
    for record in proposal.inputs:
        found = resolve_input(record, proposal.source_dir)
        if found is None:
            return InputOverlap(False, f"the inputs are not available here: '{record.name}' "
                                       f"({record.path}) does not exist on this machine")
        paths.append(found)
    try:
        from analysis.adapters import load_adapter
        from analysis.overlap import aggregate, overlap_table
    except ImportError as exc:
        return InputOverlap(False, f"the inputs are not available: overlap analysis cannot run ({exc})")
    try:
        adapters = [load_adapter(p, name=r.name) for p, r in zip(paths, proposal.inputs)]
    except (AtlasError, OSError, ImportError) as exc:  # ImportError: loader not installed here
        return InputOverlap(False, f"the inputs are not available: {exc}")
    hashes = tuple(HashCheck(r.name, str(p), r.sha256, a.sha256)
                   for r, p, a in zip(proposal.inputs, paths, adapters))
    if len(adapters) < 2:
        return InputOverlap(False, "a single input: there is no pair to compare", hashes=hashes)
    try:
        table = overlap_table(adapters, progress=progress)
        matrices = {metric: np.asarray(aggregate(table, metric), dtype=float)  # (N, N)
                    for metric, _heading in OVERLAP_METRICS}
    except AtlasError as exc:
        return InputOverlap(False, f"overlap could not be computed: {exc}", hashes=hashes)
    return InputOverlap(True, labels=tuple(r.name for r in proposal.inputs), matrices=matrices,
                        hashes=hashes, n_modules=len(table))


def preview_tasks(preview: Mapping[str, Any] | None) -> tuple[list[str], list[str], list[list[Any]]]:
    """(tasks, metric names, rows) of the preview's scalar per-task metrics, for a table.

    The preview is the merge's evidence record (`analysis.workflow.evidence`, version 2, one row per
    input) or an older snapshot (`tasks` or the Merge page's `per_task` mapping); all read the same way.
    """
    return task_table(preview)


def preview_export(preview: Mapping[str, Any] | None) -> str | None:
    """One line on the exported adapter's rank and fidelity (None for snapshots that do not record it)."""
    return export_line(preview)


@dataclass(frozen=True)
class Measured:
    """The measured rows of a proposal's evidence, with whose model and which data produced them."""

    model: str  # one line: name, kind, architecture, sha256 or revision, device, dtype
    data: tuple[str, ...]  # one line per data file: task, file, sha256, rows, metric
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    warnings: tuple[str, ...] = ()


def preview_measured(preview: Mapping[str, Any] | None) -> Measured | None:
    """The evidence's `measured` block for a report, or None when nothing was measured."""
    measured = preview.get("measured") if isinstance(preview, Mapping) else None
    header, rows = measured_table(measured)
    if not header:
        return None
    warnings = measured.get("warnings") if isinstance(measured, Mapping) else None
    return Measured(model_line(measured) or "measured on an unnamed model", tuple(data_lines(measured)),
                    tuple(header), tuple(tuple(r) for r in rows),
                    tuple(str(w) for w in warnings or [] if isinstance(w, str)))


def heatmap_figure(matrix: np.ndarray, labels: tuple[str, ...], title: str, *, signed: bool | None = None) -> Any:
    """A symmetric N x N heatmap; labels are HTML-escaped because plotly renders pseudo-HTML in text."""
    import html

    import plotly.graph_objects as go

    safe = [html.escape(s, quote=True) for s in labels]
    z = np.asarray(matrix, dtype=float)  # (N, N)
    if signed is None:  # cosine can be negative: a diverging scale centred on 0; shares are 0..1
        signed = bool(np.nanmin(z) < 0) if z.size else False
    fig = go.Figure(go.Heatmap(
        z=z, x=safe, y=safe, zmin=-1.0 if signed else 0.0, zmax=1.0,
        colorscale="RdBu_r" if signed else "Viridis", zmid=0.0 if signed else None,
        texttemplate="%{z:.2f}" if z.size <= 144 else None,
        hovertemplate="%{y} × %{x}: %{z:.4f}<extra></extra>", xgap=1, ygap=1))
    fig.update_layout(title=html.escape(title), xaxis=dict(type="category", tickangle=-35),
                      yaxis=dict(type="category", autorange="reversed"),
                      height=max(360, 80 + 34 * len(labels)), margin=dict(l=10, r=10, t=60, b=10))
    return fig
