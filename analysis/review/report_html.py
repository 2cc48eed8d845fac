"""A self-contained, offline HTML report of one proposal.

A reviewer may open it on a laptop without network, attach it to a ticket, or archive it with the
merged adapter, so nothing is fetched: CSS is inline, plotly.js is embedded once, and no element
points at an external URL. Every user-controlled string passes through `html_text`.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

from analysis._version import __version__
from analysis.review.escape import html_text as h
from analysis.review.evidence import (
    OVERLAP_METRICS,
    InputOverlap,
    heatmap_figure,
    preview_export,
    preview_measured,
    preview_tasks,
)
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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
     color:#1f2328;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;overflow-wrap:anywhere}
th{background:#f6f8fa} pre{background:#f6f8fa;padding:.75rem;overflow:auto;white-space:pre-wrap}
.meta{color:#57606a} .badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-weight:600}
.open{background:#ddf4ff;color:#0969da} .approved{background:#dafbe1;color:#1a7f37}
.rejected{background:#ffebe9;color:#cf222e} .changes{background:#fff8c5;color:#9a6700}
.event{border-left:3px solid #d0d7de;padding:.3rem .8rem;margin:.6rem 0} .event.decision{border-color:#8250df}
.ok{color:#1a7f37} .bad{color:#cf222e} code{font-family:ui-monospace,monospace;font-size:.9em}
.note{background:#fff8c5;padding:.5rem .75rem}
"""


def _badge(status: str) -> str:
    css = {"open": "open", "approved": "approved", "rejected": "rejected"}.get(status, "changes")
    return f'<span class="badge {css}">{h(status)}</span>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return h(f"{value:.4g}")
    return h(value)


def _figure_html(fig: Any) -> str:
    # plotly escapes "<" and "/" inside its JSON, so a label cannot close the <script> element.
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def _decision_section(p: Proposal) -> str:
    latest = p.latest_decision
    if latest is None:
        return "<p>No decision yet: the proposal is <b>open</b>.</p>"
    return (f"<p>{_badge(p.status)} by <b>{h(latest.author)}</b> on {h(latest.created_at)}</p>"
            f"<blockquote><pre>{h(latest.text)}</pre></blockquote>"
            f"<p class='meta'>{len(p.decisions)} decision(s) in total; the latest one sets the status.</p>")


def _inputs_section(p: Proposal, overlap: InputOverlap | None) -> str:
    checks = {c.name: c for c in overlap.hashes} if overlap else {}
    rows = []
    for i in p.inputs:
        check = checks.get(i.name)
        verdict = ("not checked" if check is None else "matches" if check.matches
                   else f"DIFFERS (file now {check.found})")
        rows.append([i.name, i.format, i.sha256, i.path, verdict])
    return _table(["name", "format", "sha256 (recorded)", "path", "file on disk"], rows)


def _overlap_section(overlap: InputOverlap | None) -> tuple[str, bool]:
    if overlap is None:
        return "<p class='note'>Overlap was not computed for this report.</p>", False
    if not overlap.available:
        return f"<p class='note'>{h(overlap.reason)}</p>", False
    parts = [f"<p class='meta'>Aggregated over {overlap.n_modules} shared module(s).</p>"]
    for metric, heading in OVERLAP_METRICS:
        if metric in overlap.matrices:
            fig = heatmap_figure(overlap.matrices[metric], overlap.labels, heading, signed=metric == "cosine")
            parts.append(_figure_html(fig))
    return "\n".join(parts), True


def _preview_section(preview: Mapping[str, Any] | None) -> tuple[str, bool]:
    if preview is None:
        return "<p class='note'>No merge preview was attached to this proposal.</p>", False
    tasks, metrics, rows = preview_tasks(preview)
    parts, has_fig = [], False
    export = preview_export(preview)
    if export:
        parts.append(f"<p>{h(export)}</p>")
    if tasks:
        parts.append(_table(["task"] + [metric_label(m) for m in metrics], [[t] + r for t, r in zip(tasks, rows)]))
        numeric = [k for j, k in enumerate(metrics) if k not in ("conflicts", "core_size")  # counts, not shares
                   and all(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in rows)]
        if numeric:
            import plotly.graph_objects as go

            fig = go.Figure([go.Bar(name=h(metric_label(k)), x=[h(t) for t in tasks],
                                    y=[r[metrics.index(k)] for r in rows]) for k in numeric])
            fig.update_layout(barmode="group", title="merge preview per task", height=380,
                              margin=dict(l=10, r=10, t=50, b=10))
            parts.append(_figure_html(fig))
            has_fig = True
    parts.append("<details><summary>full preview snapshot (JSON)</summary>"
                 f"<pre>{h(json.dumps(preview, indent=2, sort_keys=True))}</pre></details>")
    return "\n".join(parts), has_fig


def _measured_section(preview: Mapping[str, Any] | None) -> str:
    measured = preview_measured(preview)
    if measured is None:
        return ""
    data = "".join(f"<li>{h(d)}</li>" for d in measured.data)
    warn = "".join(f"<p class='note'>warning: {h(w)}</p>" for w in measured.warnings)
    return (f"<h2>Measured</h2>\n<p>{h(measured.model)}</p>\n<ul>{data}</ul>\n{warn}"
            + _table(list(measured.header), [list(r) for r in measured.rows])
            + "<p class='meta'>exact: exact-match accuracy (higher is better); nll: answer NLL in nats per token "
              "(lower is better)</p>")


def _verdict_css(cells: list[str]) -> str:
    row = "".join(f"<td>{h(c)}</td>" for c in cells[:-1])
    css = "ok" if cells[-1].startswith("PASS") else "bad" if cells[-1].startswith("FAIL") else "meta"
    return f"<tr>{row}<td class='{css}'><b>{h(cells[-1])}</b></td></tr>"


def decision_section(preview: Mapping[str, Any] | None) -> str:
    """The decision table (`analysis.workflow.decision`): retention with intervals against the bar, the
    prediction beside it, the general-text check, and the model and data they were measured on."""
    decision, frozen = frozen_decision(preview)
    if decision is None:
        return ("<p class='note'>Nothing was measured for this proposal: there is no retention to hold against a "
                "bar. Only the data-free preview below is available.</p>")
    parts = [f"<p><b>{h(summary_line(decision))}</b></p>"]
    if not frozen:
        parts.append(f"<p class='meta'>The author set no bar; shown against the default bar {decision.bar:g}.</p>")
    head = "".join(f"<th>{h(c)}</th>" for c in RETENTION_HEADER)
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>"
                 + "".join(_verdict_css(r) for r in retention_rows(decision)) + "</tbody></table>")
    if decision.text:
        head = "".join(f"<th>{h(c)}</th>" for c in TEXT_HEADER)
        parts.append(f"<h3>General-text check</h3><table><thead><tr>{head}</tr></thead><tbody>"
                     + "".join(_verdict_css(r) for r in text_rows(decision)) + "</tbody></table>")
    parts.append("<ul class='meta'>" + "".join(f"<li>{h(n)}</li>" for n in notes(decision)) + "</ul>")
    return "\n".join(parts)


def _discussion_section(p: Proposal) -> str:
    items = []
    for e in p.events:
        if e.kind == "created":
            what = "opened the proposal"
        elif e.kind == "decision":
            what = f"decided: {_badge(DECISIONS.get(e.decision or '', e.decision or ''))}"
        else:
            what = "commented"
        items.append(f"<div class='event {h(e.kind)}'><b>{h(e.author)}</b> {what} "
                     f"<span class='meta'>{h(e.created_at)} &middot; event {e.id}</span>"
                     + ("" if e.kind == "created" else f"<pre>{h(e.text)}</pre>") + "</div>")
    return "\n".join(items)


def render_html(proposal: Proposal, overlap: InputOverlap | None = None) -> str:
    """The whole report as one HTML string (plotly.js inline when there is a figure)."""
    p = proposal
    overlap_html, overlap_fig = _overlap_section(overlap)
    preview_html, preview_fig = _preview_section(p.preview)
    plotly_js = ""
    if overlap_fig or preview_fig:
        from plotly.offline import get_plotlyjs

        plotly_js = f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Merge proposal #{p.id}: {h(p.title)}</title>
<style>{CSS}</style>
{plotly_js}
</head><body>
<h1>Merge proposal #{p.id}: {h(p.title)}</h1>
<p class="meta">{_badge(p.status)} &middot; opened by <b>{h(p.author)}</b> on {h(p.created_at)}
 &middot; last activity {h(p.updated_at)} &middot; method <code>{h(p.method)}</code>
 &middot; recipe sha256 <code>{h(p.recipe_sha256)}</code></p>
<h2>Measured against the bar</h2>
{decision_section(p.preview)}
<h2>Decision</h2>
{_decision_section(p)}
<h2>Inputs</h2>
{_inputs_section(p, overlap)}
<h2>Overlap between the inputs</h2>
{overlap_html}
<h2>Merge preview</h2>
{preview_html}
{_measured_section(p.preview)}
<h2>Recipe</h2>
<pre>{h(p.recipe_text)}</pre>
<h2>Discussion</h2>
{_discussion_section(p)}
<p class="meta">Generated by adapter-atlas {h(__version__)} on {generated}. This file is self-contained and
works offline.</p>
</body></html>
"""
