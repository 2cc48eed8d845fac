"""Overlap: which adapters collide, where in the model, and how strongly; and a map of the whole set."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import cache
from app.components import figures, view
from app.components.adapter_map import neighbour_hover, show_adapter_map
from app.components.display import show_figure
from app.components.metrics import DISTANCE_OF_METRIC, DISTANCES, METRICS, metric_help, metric_label

ALL = "all"
SCOPES = {"layer": "Layer / module type", "module": "One module"}

st.title("Overlap")
st.caption("Adapter × adapter overlap of the updates dW, per module or averaged (energy-weighted) over a layer "
           "or module type. Adapters are listed in dendrogram order, so similar ones sit together.")

refs, _ = view.adapter_set(minimum=2)
table = view.overlap_table(refs)
layers, types, _ = cache.layers_and_types(refs)

# 1. What to look at
left, middle, right = st.columns([2, 2, 3])
with left:
    metric = view.choose("Metric", list(METRICS), view.METRIC, format_func=metric_label, help=metric_help())
spec = METRICS[metric]
with middle:
    scope = view.choose("Scope", list(SCOPES), "overlap_scope", param="scope", widget=st.radio,
                        format_func=SCOPES.get, horizontal=True)
with right:
    if scope == "module":
        module = view.choose("Module", cache.model_order(table), view.MODULE)
        matrix, where = getattr(table[module], metric), module
    else:
        layer = view.choose("Layer", [ALL] + layers, "overlap_layer", param="layer", widget=st.select_slider)
        kind = view.choose("Module type", [ALL] + types, "overlap_type", param="type")
        layer_v, kind_v = (None if layer == ALL else layer), (None if kind == ALL else kind)
        matrix = cache.aggregated(refs, metric, layer_v, kind_v)
        where = f"layer {layer}, {'all module types' if kind == ALL else kind}"

# 2. Adapter x adapter heatmap, dendrogram order, diagonal blanked, colours spanning the data
order = cache.dendrogram_order(refs, metric)
names = [refs[k][2] for k in order]
shown = np.asarray(matrix, dtype=float)[np.ix_(order, order)]  # (N, N)
lo, hi = figures.color_range(shown, spec)
rows_title = "adapter i (row)" if metric == "energy_overlap" else "adapter"
cols_title = "inside adapter j (column)" if metric == "energy_overlap" else "adapter"
event = show_figure(
    figures.heatmap(shown, names, names, spec, title=f"{spec.label} · {where}", row_title=rows_title,
                    col_title=cols_title, clickable=True, mask_diagonal=True, zrange=(lo, hi)),
    name=f"overlap_{metric}_{where}", key="overlap_heatmap", on_select="rerun",
    matrix=(shown, names, names), metric=metric, scope=where)
st.caption(f"**Click a cell to open that pair below.** Colours span the off-diagonal values, {lo:{spec.fmt}} to "
           f"{hi:{spec.fmt}} (the metric's full range is {spec.zmin:g} to {spec.zmax:g}); the blank diagonal is "
           "each adapter against itself."
           + (" Energy overlap is asymmetric: row i, column j is the share of i's update inside j's column space."
              if metric == "energy_overlap" else ""))

# Where they collide most by this metric: the pairs, then the (module, pair) cells against random subspaces
with st.expander(f"Most colliding pairs and modules · {spec.label}", expanded=True):
    pair_rows, cell_rows = cache.ranked(refs, metric)
    fmt = "%.1f" if metric == "mean_angle_deg" else "%.3f"
    left, right = st.columns([2, 3])
    number = st.column_config.NumberColumn(format=fmt, width="small", help=spec.help)
    left.dataframe(pd.DataFrame([{"pair": f"{c['a']} ↔ {c['b']}" if metric != "energy_overlap"
                                  else f"{c['a']} in {c['b']}", "value": c["value"]} for c in pair_rows[:10]]),
                   hide_index=True, width="stretch", column_config={"value": number})
    right.dataframe(pd.DataFrame([{"module": view.module_token(c["module"]), "pair": f"{c['a']} ↔ {c['b']}",
                                   "value": c["value"], "random subspaces": c["random"]} for c in cell_rows]),
                    hide_index=True, width="stretch",
                    column_config={"value": number, "random subspaces": st.column_config.NumberColumn(
                        format=fmt, width="small", help="The value random subspaces of the same ranks give: "
                                                        "max(r_i, r_j)/d for subspace similarity, r_j/d for energy "
                                                        "overlap, 0 for cosine. Far above it is learned structure.")})
    st.caption("Left: pairs over the whole model (energy-weighted); right: the single modules where a pair collides "
               "most. The ranking depends on the metric: subspace similarity asks whether two updates write into "
               "the same directions, cosine whether they write the same thing"
               + (" (ranked by |cosine|)." if metric == "cosine" else "."))

# 3. The map: every adapter placed by its distances, coloured by its group
distance = DISTANCE_OF_METRIC.get(metric, "cosine")
with st.expander("Adapter map: the whole set in two dimensions", expanded=True):
    amap = cache.adapter_map(refs, distance)
    all_names = [ref[2] for ref in refs]
    hover = neighbour_hover(all_names, amap["distance"], k=3)
    show_adapter_map(amap["coords"], all_names, amap["groups"], hover=hover, key="overlap_map",
                     name=f"adapter_map_{distance}", title=f"Adapter map · {DISTANCES[distance]}",
                     distance=distance)
    st.caption(f"Points closer together overlap more ({DISTANCES[distance]}, averaged over all shared modules). "
               f"Placed by multidimensional scaling of the distance matrix (stress {amap['stress']:.2f}: below 0.1 "
               f"the map keeps the distances well); colours are the {max(amap['groups']) + 1} groups with the best "
               "silhouette, as on the Clusters page. Hover a point for its nearest neighbours."
               + (" The distances here are nearly all alike, which two dimensions cannot keep: trust the colours "
                  "and the neighbours more than the exact positions." if amap["stress"] > 0.2 else ""))

# 4. One pair, layer by layer: click a cell above or pick the pair here
st.subheader("One pair across the model")
pairs = [(a, b) for x, a in enumerate(order) for b in order[x + 1:]]
labels = {p: f"{refs[p[0]][2]}  ↔  {refs[p[1]][2]}" for p in pairs}
clicked = view.clicked_pair(event, names, order)
if clicked is not None and clicked != st.session_state.get("overlap_last_click"):
    st.session_state["overlap_last_click"] = clicked
    a, b = clicked
    st.session_state["overlap_pair"] = (a, b) if (a, b) in labels else (b, a)
pair = view.choose("Pair", pairs, "overlap_pair", param="pair", format_func=labels.get,
                   short=lambda p: f"{refs[p[0]][2]}~{refs[p[1]][2]}")
i, j = pair
st.session_state[view.PAIR] = (refs[i][2], refs[j][2])
pair_layers, pair_types, pm = cache.pair_matrix(refs, i, j, metric)
pair_lo, pair_hi = figures.color_range(pm, spec, exclude_diagonal=False)
show_figure(
    figures.heatmap(pm, [str(x) for x in pair_layers], pair_types, spec,
                    title=f"{spec.label} · {refs[i][2]} vs {refs[j][2]}", row_title="layer",
                    col_title="module type", annotate=pm.size <= 120, zrange=(pair_lo, pair_hi)),
    name=f"pair_{metric}_{refs[i][2]}_{refs[j][2]}", key="overlap_pair_heatmap",
    matrix=(pm, [str(x) for x in pair_layers], pair_types), metric=metric, pair=[refs[i][2], refs[j][2]])
st.caption(f"Colours span this pair's values, {pair_lo:{spec.fmt}} to {pair_hi:{spec.fmt}}.")
st.page_link("app_pages/subspaces.py", label="Principal angles and the phi grid of this pair",
             icon=":material/architecture:")
