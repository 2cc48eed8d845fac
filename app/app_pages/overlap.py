"""Overlap: which adapters collide, where in the model, and how strongly."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app import cache
from app.components import figures, view
from app.components.display import show_figure
from app.components.metrics import METRICS, metric_label

ALL = "all"

st.title("Overlap")
st.caption("Adapter × adapter overlap of the updates dW, per module or averaged (energy-weighted) over a layer "
           "or module type. Adapters are listed in dendrogram order, so similar ones sit together.")

refs, _ = view.adapter_set(minimum=2)
table = view.overlap_table(refs)
layers, types, _ = cache.layers_and_types(refs)

# 1. What to look at
left, middle, right = st.columns([2, 2, 3])
with left:
    metric = view.choose("Metric", list(METRICS), view.METRIC, format_func=metric_label,
                         help="; ".join(f"{m.label}: {m.help}" for m in METRICS.values()))
spec = METRICS[metric]
with middle:
    scope = st.radio("Scope", ["Layer / module type", "One module"], key="overlap_scope", horizontal=True)
with right:
    if scope == "One module":
        module = view.choose("Module", cache.model_order(table), view.MODULE)
        matrix, where = getattr(table[module], metric), module
    else:
        layer = view.choose("Layer", [ALL] + layers, "overlap_layer", widget=st.select_slider)
        kind = view.choose("Module type", [ALL] + types, "overlap_type")
        layer_v, kind_v = (None if layer == ALL else layer), (None if kind == ALL else kind)
        matrix = cache.aggregated(refs, metric, layer_v, kind_v)
        where = f"layer {layer}, {'all module types' if kind == ALL else kind}"

# 2. Adapter x adapter heatmap, dendrogram order
order = cache.dendrogram_order(refs, metric)
names = [refs[k][2] for k in order]
shown = np.asarray(matrix, dtype=float)[np.ix_(order, order)]  # (N, N)
rows_title = "adapter i (row)" if metric == "energy_overlap" else "adapter"
cols_title = "inside adapter j (column)" if metric == "energy_overlap" else "adapter"
event = show_figure(
    figures.heatmap(shown, names, names, spec, title=f"{spec.label} · {where}", row_title=rows_title,
                    col_title=cols_title, clickable=True),
    name=f"overlap_{metric}_{where}", key="overlap_heatmap", on_select="rerun",
    matrix=(shown, names, names), metric=metric, scope=where)
if metric == "energy_overlap":
    st.caption("Energy overlap is asymmetric: row i, column j is the share of i's update inside j's column space.")

# 3. One pair, layer by layer: click a cell above or pick the pair here
st.subheader("One pair across the model")
pairs = [(a, b) for x, a in enumerate(order) for b in order[x + 1:]]
labels = {p: f"{refs[p[0]][2]}  ↔  {refs[p[1]][2]}" for p in pairs}
clicked = view.clicked_pair(event, names, order)
if clicked is not None and clicked != st.session_state.get("overlap_last_click"):
    st.session_state["overlap_last_click"] = clicked
    a, b = clicked
    st.session_state["overlap_pair"] = (a, b) if (a, b) in labels else (b, a)
pair = view.choose("Pair", pairs, "overlap_pair", format_func=labels.get)
i, j = pair
st.session_state[view.PAIR] = (refs[i][2], refs[j][2])
pair_layers, pair_types, pm = cache.pair_matrix(refs, i, j, metric)
show_figure(
    figures.heatmap(pm, [str(x) for x in pair_layers], pair_types, spec,
                    title=f"{spec.label} · {refs[i][2]} vs {refs[j][2]}", row_title="layer",
                    col_title="module type", annotate=pm.size <= 120),
    name=f"pair_{metric}_{refs[i][2]}_{refs[j][2]}", key="overlap_pair_heatmap",
    matrix=(pm, [str(x) for x in pair_layers], pair_types), metric=metric, pair=[refs[i][2], refs[j][2]])
st.page_link("app_pages/subspaces.py", label="Principal angles and the phi grid of this pair",
             icon=":material/architecture:")
