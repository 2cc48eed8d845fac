"""Review: the team's proposals to merge adapters, each with its recipe, evidence, discussion and decision.

`?proposal=ID` opens one proposal directly, so a link can be pasted in chat or a pull request.
Everything here calls `analysis.review`; user-written text is escaped before Streamlit renders it.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.errors import AtlasError
from analysis.review import DECISIONS, propose, resolve_db_url
from analysis.review.escape import md_lines, md_text
from analysis.review.evidence import OVERLAP_METRICS, heatmap_figure, preview_tasks
from analysis.review.report_html import render_html
from analysis.review.report_md import render_markdown
from analysis.workflow.evidence import METRIC_HELP, metric_label
from app import cache
from app.components import decision_view, view
from app.components.display import show_figure
from app.components.sources import confine

AUTHOR = "review_author"  # the name field's widget key on this page
FLASH = "review_flash"
CLEAR = "review_clear"  # form fields to empty at the next run, after a successful submit
DECISION_LABELS = {"approve": "Approve", "changes": "Request changes", "reject": "Reject"}

st.title("Review")
st.caption("Merge decisions are made together: each proposal keeps the exact recipe, the preview numbers its "
           "author saw, and an append-only history of comments and decisions. The latest decision sets the status.")

url = resolve_db_url()
try:
    store = cache.review_store(url)
except AtlasError as exc:
    st.error(str(exc))
    st.stop()
view.show_refused()
st.session_state.setdefault(AUTHOR, view.author())
for key in st.session_state.pop(CLEAR, []):
    st.session_state[key] = ""
if st.session_state.pop("review_reset_verdict", False):
    st.session_state["review_decision"] = None
if message := st.session_state.pop(FLASH, None):
    st.success(message)


def _when(timestamp: str) -> str:
    """ISO timestamps as people read them: to the second with the zone, no 'T' (UTC when the text has none)."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp[:19].replace("T", " ")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if not moment.utcoffset():
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC%z")


def _signed(name: str) -> None:
    """Remember the name for the other forms of this session (the Merge page reads it too)."""
    st.session_state[view.AUTHOR] = name.strip()


def open_proposal(pid: int | None) -> None:
    if pid is None:
        st.query_params.pop("proposal", None)
    else:
        st.query_params["proposal"] = str(pid)


def requested_id() -> int | None:
    raw = st.query_params.get("proposal")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        st.error(f"'{raw}' is not a proposal id: ids are whole numbers.")
        return None


def show_list() -> None:
    """All proposals, newest first, with a picker that opens one."""
    rows = store.list_proposals()
    st.caption(f"Review store: `{store.display_url}`")
    if not rows:
        st.info("No proposals yet. Propose a merge from the Merge page, with `adapter-atlas review propose`, "
                "or from a recipe below.")
    else:
        statuses = view.choose_many("Status", ["open", *DECISIONS.values()], "review_status_filter", param="status",
                                  placeholder="all statuses")
        shown = [r for r in rows if not statuses or r.status in statuses]
        table = pd.DataFrame([{"id": r.id, "title": r.title, "author": r.author, "status": r.status,
                               "method": r.method, "updated": _when(r.updated_at)}
                              for r in shown])
        st.dataframe(table, hide_index=True, width="stretch")
        labels = {r.id: f"#{r.id} · {r.title} ({r.status})" for r in shown}
        if labels:
            chosen = st.selectbox("Open proposal", list(labels), format_func=labels.get, key="review_pick")
            if st.button("Open", key="review_open", type="primary"):
                open_proposal(chosen)
                st.rerun()
    with st.expander("Propose a merge from a recipe file"):
        st.session_state.setdefault("review_propose_author", view.author())
        with st.form("review_propose_form"):
            path = st.text_input("recipe.yaml or the merge output directory", key="review_propose_path")
            title = st.text_input("Title", key="review_propose_title")
            author = st.text_input("Your name", key="review_propose_author", placeholder="required")
            if st.form_submit_button("Propose"):
                try:
                    pid = propose(store, visitor_recipe(path), title, author)  # only files under the roots
                except AtlasError as exc:
                    st.error(str(exc))
                else:
                    _signed(author)
                    st.session_state[FLASH] = f"Proposal #{pid} opened."
                    open_proposal(pid)
                    st.rerun()


def visitor_recipe(text: str) -> Path:
    """The recipe file a visitor named, and the preview.json that `propose` reads beside it, both through
    `sources.confine`: a folder under the roots whose recipe.yaml or preview.json links outside is refused."""
    recipe = confine(text)
    if recipe.is_dir():
        recipe = confine(recipe / "recipe.yaml")
    preview = recipe.parent / "preview.json"
    if preview.exists() or preview.is_symlink():
        confine(preview)
    return recipe


def show_evidence(p) -> None:  # noqa: ANN001 - analysis.review.Proposal
    tab_preview, tab_overlap, tab_recipe = st.tabs(["Merge preview", "Overlap of the inputs", "Recipe"])
    with tab_preview:
        tasks, metrics, rows = preview_tasks(p.preview)
        if p.preview is None:
            st.info("No merge preview was attached to this proposal.")
        elif tasks:
            st.dataframe(pd.DataFrame(rows, index=tasks, columns=[metric_label(m) for m in metrics]), width="stretch",
                         column_config={metric_label(m): st.column_config.NumberColumn(help=METRIC_HELP[m])
                                        for m in metrics if m in METRIC_HELP})
            st.caption("Data-free: what the merge keeps of each input's weights, true of the weights only; the "
                       "measured retention above is what decides.")
        if p.preview is not None:
            with st.expander("Full preview snapshot (JSON)"):
                st.json(p.preview, expanded=False)
    with tab_overlap:
        inputs = pd.DataFrame([{"name": i.name, "format": i.format, "sha256": i.sha256, "path": i.path}
                               for i in p.inputs])
        st.dataframe(inputs, hide_index=True, width="stretch")
        if st.toggle("Load the inputs and compute their overlap", key=f"review_overlap_{p.id}"):
            overlap = cache.review_overlap(url, p.id, p.recipe_sha256)
            if not overlap.available:
                st.warning(overlap.reason)
            for check in overlap.hashes:
                if not check.matches:
                    st.warning(f"{check.name}: the file on disk ({check.found}) differs from the sha256 recorded "
                               "in the recipe; the overlap below is of the file as it is now.")
            for metric, heading in OVERLAP_METRICS if overlap.available else ():
                fig = heatmap_figure(overlap.matrices[metric], overlap.labels, heading, signed=metric == "cosine")
                fig.update_layout(xaxis_title="adapter", yaxis_title="adapter")
                fig.update_traces(colorbar=dict(title=dict(text=metric.replace("_", " "), side="right")))
                show_figure(fig, name=f"proposal_{p.id}_{metric}", key=f"review_fig_{metric}",
                            matrix=(overlap.matrices[metric], list(overlap.labels), list(overlap.labels)),
                            metric=metric, proposal=p.id)
    with tab_recipe:
        st.caption(f"recipe sha256 `{p.recipe_sha256}`")
        st.code(p.recipe_text, language="yaml")


def show_history(p) -> None:  # noqa: ANN001
    st.subheader("Discussion")
    for e in p.events:
        with st.container(border=True):
            if e.kind == "created":
                st.markdown(f"**{md_text(e.author)}** opened the proposal · {_when(e.created_at)}")
            elif e.kind == "comment":
                st.markdown(f"**{md_text(e.author)}** commented · {_when(e.created_at)}")
                st.markdown(md_lines(e.text))
            else:
                st.markdown(f"**{md_text(e.author)}** decided **{DECISIONS[e.decision]}** · {_when(e.created_at)}")
                st.markdown(md_lines(e.text))


def _need_name() -> None:
    if not str(st.session_state.get(AUTHOR) or "").strip():
        raise AtlasError("type your name above first: every comment and decision is signed (your text is kept)")


def show_forms(p) -> None:  # noqa: ANN001
    st.text_input("Your name (required)", key=AUTHOR, placeholder="required: who comments or decides",
                  help="Recorded with every comment and decision you add.",
                  on_change=lambda: _signed(st.session_state[AUTHOR]))
    # The forms keep what was typed when the store refuses it (no name, an empty comment); the
    # fields are emptied only after a successful submit (CLEAR, applied before the widgets exist).
    left, right = st.columns(2)
    with left, st.form("review_comment_form", clear_on_submit=False):
        st.markdown("**Comment**")
        body = st.text_area("Comment", label_visibility="collapsed", key="review_comment_text")
        if st.form_submit_button("Add comment"):
            try:
                _need_name()
                store.add_comment(p.id, author=st.session_state[AUTHOR], text=body)
            except AtlasError as exc:
                st.error(str(exc))
            else:
                _signed(st.session_state[AUTHOR])
                st.session_state[CLEAR] = ["review_comment_text"]
                st.session_state[FLASH] = "Comment added."
                st.rerun()
    with right, st.form("review_decision_form", clear_on_submit=False):
        st.markdown("**Decision**")
        decision = st.radio("Decision", list(DECISION_LABELS), format_func=DECISION_LABELS.get, horizontal=True,
                            label_visibility="collapsed", key="review_decision", index=None,
                            help="No verdict is pre-selected: read the table above first.")
        rationale = st.text_area("Rationale", key="review_rationale")
        if st.form_submit_button("Record decision"):
            try:
                _need_name()
                if decision is None:
                    raise AtlasError("choose a verdict (Approve, Request changes or Reject) first; your text is kept")
                store.add_decision(p.id, author=st.session_state[AUTHOR], decision=decision, rationale=rationale)
            except AtlasError as exc:
                st.error(str(exc))
            else:
                _signed(st.session_state[AUTHOR])
                st.session_state[CLEAR] = ["review_rationale"]
                st.session_state["review_reset_verdict"] = True  # the next proposal starts with none chosen
                st.session_state[FLASH] = f"Decision recorded: {DECISIONS[decision]}."
                st.rerun()


def show_proposal(pid: int) -> None:
    try:
        p = store.get(pid)
    except AtlasError as exc:
        st.error(str(exc))
        if st.button("All proposals", key="review_back_missing"):
            open_proposal(None)
            st.rerun()
        return
    if st.button("← All proposals", key="review_back", type="tertiary"):
        open_proposal(None)
        st.rerun()
    st.header(f"#{p.id} · {md_text(p.title)}", anchor=False)
    a, b, c = st.columns(3)
    a.metric("Status", p.status)
    b.metric("Method", p.method)
    c.metric("Inputs", len(p.inputs))
    latest = p.latest_decision
    st.markdown(f"Opened by **{md_text(p.author)}** on {_when(p.created_at)}; "
                + (f"latest decision by **{md_text(latest.author)}**." if latest else "no decision yet."))
    st.subheader("Measured against the bar", anchor=False)
    decision_view.show_frozen(p.preview, key=f"review_decision_{p.id}")
    show_evidence(p)
    show_history(p)
    show_forms(p)
    overlap = (cache.review_overlap(url, p.id, p.recipe_sha256)
               if st.session_state.get(f"review_overlap_{p.id}") else None)
    d1, d2 = st.columns(2)
    d1.download_button("Report (offline HTML)", lambda: render_html(p, overlap), file_name=f"proposal-{p.id}.html",
                       mime="text/html", key="review_dl_html", on_click="ignore")
    d2.download_button("Summary for a pull request (Markdown)", lambda: render_markdown(p, overlap),
                       file_name=f"proposal-{p.id}.md", mime="text/markdown", key="review_dl_md", on_click="ignore")
    with st.expander("History as JSON"):
        st.code(json.dumps(p.to_json(), indent=2), language="json")


pid = requested_id()
view.keep_param("proposal", None if pid is None else str(pid))
if pid is None:
    show_list()
else:
    show_proposal(pid)
