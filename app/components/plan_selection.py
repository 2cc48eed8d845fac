"""Plan the adapters chosen on the Merge page, data-free, from the page (`analysis.plan.Planner`).

The planner logs one line per group it tries; a logging handler shows each line under a progress bar while it
runs in the script's thread, and since every update is a Streamlit call, pressing Cancel (or changing a control)
stops the run at the next group. With task data and minutes to spare, the CLI command verifies by real accuracy.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import pandas as pd
import streamlit as st

from analysis.errors import AtlasError
from app import cache

RESULT = "merge_plan_result"


class _Lines(logging.Handler):
    """Shows the planner's latest decision line in a placeholder (and counts them for the bar)."""

    def __init__(self, bar: Any, total: int) -> None:
        super().__init__(logging.INFO)
        self.bar, self.total, self.seen = bar, max(total, 1), 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        self.bar.progress(min(self.seen / self.total, 0.99), text=f"Planning… {record.getMessage()[:160]}")


def _run(refs: tuple[cache.AdapterRef, ...], bar_value: float) -> dict[str, Any]:
    from analysis.plan.planner import Planner
    from analysis.threads import bounded_threads

    adapters = cache.adapters_of(refs)
    bar = st.progress(0.0, text="Planning…")
    handler = _Lines(bar, total=2 * len(adapters))
    logger = logging.getLogger("analysis.plan.planner")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with bounded_threads(None):
            plan = Planner(bar_value).plan(adapters)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        bar.empty()
    return plan.as_dict()


def render(refs: Sequence[cache.AdapterRef], bar_value: float) -> None:
    """The button, the cancel, and the plan of exactly these adapters (kept while the selection is the same)."""
    refs = tuple(refs)
    key = (refs, round(bar_value, 6))
    left, right = st.columns(2)
    if left.button(f"Plan these {len(refs)} adapters (data-free)", key="merge_plan_run",
                   help="Groups the chosen adapters so every task keeps the bar by predicted retention (merges and "
                        "previews only: seconds to minutes)."):
        st.session_state.pop(RESULT, None)
        try:
            st.session_state[RESULT] = (key, _run(refs, bar_value))
        except AtlasError as exc:  # e.g. a bar outside (0, 1]: one line
            st.error(str(exc))
    if right.button("Cancel planning", key="merge_plan_cancel"):
        st.session_state.pop(RESULT, None)
        st.info("Planning cancelled.")
    held = st.session_state.get(RESULT)
    if not held or held[0] != key:
        return
    plan = held[1]
    st.metric("Your selection after planning", f"{plan['adapters_out']} of {plan['adapters_in']}",
              help=f"every task keeps >= {plan['min_retention']:g} of its own adapter by predicted retention "
                   "(data-free; verify with section 3 or the CLI with --data)")
    st.dataframe(pd.DataFrame([{"group": k + 1, "adapters": ", ".join(g["tasks"]), "method": g["method"],
                                "worst predicted retention": min(g["predicted"].values()) if g["predicted"] else None}
                               for k, g in enumerate(plan["groups"])]),
                 hide_index=True, width="stretch",
                 column_config={"worst predicted retention": st.column_config.NumberColumn(format="%.3f")})
    st.caption("A group of one is the adapter itself (retention 1 by definition). Predicted retention = 1 − "
               "interference on the task's own inputs; it is an estimate: measure a group in section 3 before "
               "proposing it.")
