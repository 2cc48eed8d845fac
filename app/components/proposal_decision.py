"""What a proposal from the Merge page carries: the export chosen in Decide, its measured rows and the decision
table at the bar set in Measure, frozen into the evidence (`evidence["decision"]`).

The Measure section scores each method's automatic PEFT export. When Decide picks another rank or format, the
adapter written is a different one: the page says so and measures that export on request, so a proposal never
carries the rows of an adapter it does not write.
"""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from analysis.errors import AtlasError
from analysis.workflow.decision import decision_table, summary_line
from app import cache
from app.components.merge_measure import MEASURED_AT, Measurement


def _held(method: str, fmt: str, rank: int | None, merge_key: Callable[[str], cache.MergeKey],
          m: Measurement) -> bool:
    return bool(m.tasks) and cache.measured_ready(merge_key(method), fmt, rank, m.ekey, m.tasks)


def render(method: str, fmt: str, rank: int | None, merge_key: Callable[[str], cache.MergeKey],
           m: Measurement | None, dtype: str = "fp32") -> bool:
    """One line on what the proposal will carry; a button to measure this export when it differs from the
    measured one. True when the proposal will carry measured rows."""
    if m is None or not m.blocks:
        return False
    if not _held(method, fmt, rank, merge_key, m):
        st.info(f"This export ({fmt}, rank {'automatic' if rank is None else rank}) is not the adapter measured in "
                f"section 3 (each method's automatic {MEASURED_AT[0]} export): measure it so the proposal carries "
                "the rows of the adapter it writes.")
        if not st.button("Measure this export", key="merge_measure_export"):
            return False
        bar = st.progress(0.0, text="Measuring this export…")
        try:
            cache.measured(merge_key(method), fmt, rank, m.ekey, m.tasks,
                           lambda stage, done, total, eta, label: bar.progress(min(done / max(total, 1), 1.0),
                                                                               text=label or stage))
        except AtlasError as exc:
            bar.empty()
            st.error(str(exc))
            return False
        bar.empty()
    run = cache.with_measured(merge_key(method), fmt, rank, m.ekey, m.tasks)
    decision = decision_table({method: run.evidence}, bar=m.bar, tolerance=m.tolerance)
    verdict = decision.passed(method)
    (st.success if verdict else st.warning if verdict is False else st.info)(
        "The proposal carries this export's measured table: " + summary_line(decision, method))
    if dtype != "fp32":
        st.caption(f"Measured on the fp32 export; stored as {dtype} the weights differ by the storage error shown "
                   "after Build export.")
    return True


def proposed(method: str, fmt: str, rank: int | None, merge_key: Callable[[str], cache.MergeKey],
             m: Measurement | None, dtype: str = "fp32") -> Any:
    """The run a proposal stores: the export, with its measured rows and the frozen decision table when held."""
    if m is None:
        return cache.merge_export(merge_key(method), fmt, rank, dtype=dtype)
    if not _held(method, fmt, rank, merge_key, m):  # nothing measured: the data-light estimate, when held, travels
        return cache.with_measured(merge_key(method), fmt, rank, m.ekey, (), dtype=dtype)
    run = cache.with_measured(merge_key(method), fmt, rank, m.ekey, m.tasks, dtype=dtype)
    return cache.with_measured(merge_key(method), fmt, rank, m.ekey, m.tasks, decision=m.frozen(method, run.evidence),
                               dtype=dtype)
