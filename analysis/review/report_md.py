"""A Markdown summary of one proposal, to paste into a pull request.

Short on purpose: status, decision, inputs with hashes, parameters, preview numbers and the
discussion. Every user-controlled string goes through `md_text`, so names like `<script>` or
`a|b` or `@team` render as typed and never as HTML, a table break or a mention.
"""
from __future__ import annotations

import json
from typing import Any

from analysis.review.escape import md_text as t
from analysis.review.evidence import InputOverlap, preview_export, preview_measured, preview_tasks
from analysis.review.models import DECISIONS, Proposal
from analysis.workflow.decision import (
    RETENTION_HEADER,
    TEXT_HEADER,
    frozen_decision,
    notes,
    retention_rows,
    summary_line,
    text_rows,
)
from analysis.workflow.evidence import metric_label

MAX_PARAM_CHARS = 120


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
        value = value if len(value) <= MAX_PARAM_CHARS else value[: MAX_PARAM_CHARS - 1] + "…"
    return t(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header)] + [_row(r) for r in rows]


def decision_lines(preview: Any) -> list[str]:
    """The decision table (`analysis.workflow.decision`) as Markdown lines."""
    decision, frozen = frozen_decision(preview)
    lines = ["### Measured against the bar", ""]
    if decision is None:
        return lines + ["_Nothing was measured for this proposal: only the data-free preview is available._", ""]
    lines += [f"**{t(summary_line(decision))}**", ""]
    if not frozen:
        lines += [f"_The author set no bar; shown against the default bar {decision.bar:g}._", ""]
    lines += _table(list(RETENTION_HEADER), retention_rows(decision)) + [""]
    if decision.text:
        lines += ["General-text check:", ""] + _table(list(TEXT_HEADER), text_rows(decision)) + [""]
    return lines + [f"- {t(n)}" for n in notes(decision)] + [""]


def render_markdown(proposal: Proposal, overlap: InputOverlap | None = None) -> str:
    """The summary as Markdown text (GitHub-flavoured)."""
    import yaml

    p = proposal
    lines = [f"## Merge proposal #{p.id}: {t(p.title)}", ""]
    lines.append(f"**Status:** {t(p.status)} · **method:** {t(p.method)} · **opened by** {t(p.author)} "
                 f"on {p.created_at} · **recipe sha256:** `{p.recipe_sha256}`")
    lines.append("")
    lines += decision_lines(p.preview)
    latest = p.latest_decision
    if latest is None:
        lines += ["**Decision:** none yet (open).", ""]
    else:
        lines += [f"**Decision:** {t(DECISIONS.get(latest.decision or '', ''))} by {t(latest.author)} "
                  f"on {latest.created_at}", "", f"> {t(latest.text)}", ""]

    lines += ["### Inputs", ""]
    checks = {c.name: c for c in overlap.hashes} if overlap else {}
    rows = []
    for i in p.inputs:
        c = checks.get(i.name)
        verdict = "not checked" if c is None else ("matches" if c.matches else "DIFFERS")
        rows.append([i.name, i.format, i.sha256, verdict])
    lines += _table(["name", "format", "sha256", "file on disk"], rows) + [""]

    recipe = yaml.safe_load(p.recipe_text) or {}
    params = recipe.get("parameters") or {}
    if params:
        lines += ["### Parameters", ""] + _table(["parameter", "value"], [[k, v] for k, v in params.items()])
        lines.append("")
    weights, export = recipe.get("weights"), recipe.get("export") or {}
    lines += [f"Weights: {_cell(weights)} · export: {_cell(export.get('format'))} "
              f"at rank {_cell(export.get('rank'))}", ""]

    if overlap is not None and overlap.available:
        lines += ["### Overlap (aggregated cosine)", ""]
        matrix = overlap.matrices.get("cosine")
        if matrix is not None:
            lines += _table(["", *overlap.labels], [[a, *[float(v) for v in row]]
                                                    for a, row in zip(overlap.labels, matrix)])
            lines.append("")
    elif overlap is not None:
        lines += [f"_Overlap: {t(overlap.reason)}_", ""]

    tasks, metrics, trows = preview_tasks(p.preview)
    lines += ["### Merge preview", ""]
    export = preview_export(p.preview)
    if export:
        lines += [t(export), ""]
    if tasks:
        lines += _table(["task", *map(metric_label, metrics)], [[task, *r] for task, r in zip(tasks, trows)]) + [""]
    else:
        lines += ["No per-task preview was attached." if p.preview is None
                  else "The preview has no per-task table; see the HTML report.", ""]

    measured = preview_measured(p.preview)
    if measured is not None:
        lines += ["### Measured", "", t(measured.model), ""] + [f"- data: {t(d)}" for d in measured.data] + [""]
        lines += [f"> warning: {t(w)}" for w in measured.warnings] + ([""] if measured.warnings else [])
        lines += _table(list(measured.header), [list(r) for r in measured.rows]) + [""]
        lines += ["exact: exact-match accuracy (higher is better); nll: answer NLL in nats per token (lower is "
                  "better)", ""]

    lines += ["### Discussion", ""]
    for e in p.events:
        if e.kind == "created":
            lines.append(f"- {e.created_at} **{t(e.author)}** opened the proposal")
        elif e.kind == "decision":
            lines.append(f"- {e.created_at} **{t(e.author)}** decided "
                         f"**{t(DECISIONS.get(e.decision or '', ''))}**: {t(e.text)}")
        else:
            lines.append(f"- {e.created_at} **{t(e.author)}**: {t(e.text)}")
    lines += ["", f"<sub>adapter-atlas review #{p.id}; {len(p.comments)} comment(s), "
                  f"{len(p.decisions)} decision(s)</sub>", ""]
    return "\n".join(lines)
