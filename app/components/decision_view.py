"""The decision table on screen: the same cells the review reports print (`analysis.workflow.decision`).

Used by the Merge page (live, with the bar and tolerance controls) and the Review page (the table a proposal
froze), so an author and a reviewer read one table.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import pandas as pd
import streamlit as st

from analysis.adapters.safe_text import markdown_text
from analysis.workflow.decision import (
    DEFAULT_BAR,
    DEFAULT_TOLERANCE,
    RETENTION_HEADER,
    TEXT_HEADER,
    Decision,
    frozen_decision,
    notes,
    retention_rows,
    summary_line,
    text_rows,
)
from app.components import view


def _colour(cell: str) -> str:
    if cell.startswith("PASS"):
        return "color: #1a7f37; font-weight: 600"
    if cell.startswith("FAIL"):
        return "color: #cf222e; font-weight: 600"
    return "color: #57606a"


def _frame(header: tuple[str, ...], rows: list[list[str]]) -> Any:
    frame = pd.DataFrame(rows, columns=list(header))
    return frame.style.map(_colour, subset=["verdict"])


def controls(prefix: str) -> tuple[float, float]:
    """The bar (minimum retention) and the general-text tolerance, both in the URL (`bar=`, `tol=`)."""
    view.url_state(f"{prefix}_bar", "bar", default=DEFAULT_BAR, kind=float)
    view.url_state(f"{prefix}_tolerance", "tol", default=DEFAULT_TOLERANCE, kind=float)
    a, b = st.columns(2)
    bar = a.number_input("Bar: minimum retention per task", min_value=0.0, max_value=2.0, step=0.05, format="%.2f",
                         key=f"{prefix}_bar", help="A task passes when the merge keeps at least this share of its "
                                                   "own adapter's score (1.0 = all of it).")
    tol = b.number_input("General-text tolerance (NLL increase)", min_value=0.0, max_value=1.0, step=0.01,
                         format="%.2f", key=f"{prefix}_tolerance",
                         help="The merged adapter passes the general-text check when its NLL on generic text is "
                              "at most this much (relative) above the base model's.")
    return float(bar), float(tol)


def show(decision: Decision, *, key: str) -> None:
    """Summary line, retention table, general-text table, then definitions, track record, model and data."""
    methods = [m for m in decision.methods if any(r.method == m for r in (*decision.rows, *decision.text))]
    for method in methods if len(methods) > 1 else [None]:
        verdict = decision.passed(method)
        (st.success if verdict else st.warning if verdict is False else st.info)(summary_line(decision, method))
    rows = retention_rows(decision)
    if rows:
        st.dataframe(_frame(RETENTION_HEADER, rows), hide_index=True, width="stretch", key=f"{key}_table")
    if decision.text:
        st.markdown("**General-text check** (the merged adapter's NLL on generic text vs the base model's)")
        st.dataframe(_frame(TEXT_HEADER, text_rows(decision)), hide_index=True, width="stretch", key=f"{key}_text")
    for note in notes(decision):
        st.caption(markdown_text(note, limit=None))  # model names and data paths as typed, never markdown
    table = pd.DataFrame(rows, columns=list(RETENTION_HEADER))
    with st.container(horizontal=True):
        st.download_button("Decision table (CSV)", table.to_csv(index=False), file_name="decision.csv",
                           mime="text/csv", key=f"{key}_csv", on_click="ignore")
        st.download_button("Decision table (JSON)", json.dumps(decision.to_dict(), indent=1), file_name="decision.json",
                           mime="application/json", key=f"{key}_json", on_click="ignore")


def show_frozen(evidence: Mapping[str, Any] | None, *, key: str) -> Decision | None:
    """The table a proposal froze (or one built from its measured rows at the default bar, said so)."""
    decision, frozen = frozen_decision(evidence)
    if decision is None:
        st.warning("Nothing was measured for this proposal: there is no retention to hold against a bar, only the "
                   "data-free preview below. Ask the author to measure on the Merge page before deciding.")
        return None
    if not frozen:
        st.caption(f"The author set no bar: shown against the default bar {decision.bar:g}.")
    show(decision, key=key)
    return decision
