"""The retention estimate on screen: its value per task beside the data-free metrics, and its track record (how it
did on merges held back from its fit, as a predicted-vs-measured scatter with the rank correlation)."""
from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
import streamlit as st

from analysis.predict import track_record
from app.components.display import show_figure


def cell(task: Mapping[str, Any]) -> str:
    """`0.82 [0.55, 1.00]` for a task's predicted retention, `—` where there is none (weight 0, no calibration)."""
    pred = task.get("predicted_retention")
    if not isinstance(pred, Mapping):
        return "—"
    return f"{pred['value']:.2f} [{pred['low']:.2f}, {pred['high']:.2f}]"


def show_track_record(*, key: str) -> None:
    """One caption and, in an expander, the scatter of the held-back merges (data-free estimate)."""
    record = track_record("data-free")
    if record is None:
        st.caption("predicted retention: no calibrated estimate ships with this install.")
        return
    st.caption(f"predicted retention: expected exact-match accuracy of the merge over the task's own adapter, "
               f"from the weights alone (90% interval). Held back from its fit it ranked measured outcomes at "
               f"Spearman {record['spearman_heldout']:.2f} with mean absolute error {record['mae_heldout']:.2f} on "
               f"{record['n_heldout']} task trials ({record['measured_on']}). An estimate, not a measurement: "
               f"measure below before deciding.")
    from analysis.predict import REACH

    reach, light = track_record(REACH), track_record("outputs")
    shown = [(f"data-free, weights (Spearman {record['spearman_heldout']:.2f})", record)] + (
        [(f"data-free, reach on the model (Spearman {reach['spearman_heldout']:.2f})", reach)] if reach else []) + (
        [(f"data-light, from prompts (Spearman {light['spearman_heldout']:.2f})", light)] if light else [])
    if not any(r.get("heldout_points") for _, r in shown):
        return
    with st.expander("How well the estimates have predicted (held-back merges)"):
        fig = go.Figure([go.Scatter(x=[p for p, _ in r.get("heldout_points") or []],
                                    y=[m for _, m in r.get("heldout_points") or []], mode="markers", name=name,
                                    hovertemplate=f"{name}<br>predicted %{{x:.2f}}<br>measured %{{y:.2f}}<extra></extra>")
                         for name, r in shown])
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="perfect",
                                 hoverinfo="skip"))
        fig.update_layout(title="Predicted vs measured retention on held-back merges",
                          xaxis_title="predicted retention", yaxis_title="measured retention (exact match)",
                          legend_title="estimate")
        show_figure(fig, name="estimate_track_record", key=key)
        st.caption("The weights alone rank outcomes weakly. The reach estimate needs the model but no data: how far "
                   "each update moves the model on text the model wrote itself (an adapter that moves it far on "
                   "generic text also takes over other tasks' prompts). The data-light estimate (section 3, "
                   "**Estimate from prompts**, which computes both) needs a few unlabeled prompts per task.")
