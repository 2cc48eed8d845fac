"""Clusters: which adapters form families, from a hierarchical clustering of their overlap distances."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import cache
from app.components import figures, view
from app.components.display import show_figure
from app.components.metrics import DISTANCE_OF_METRIC, DISTANCES, MetricSpec

st.title("Clusters")
st.caption("Adapters whose updates overlap end up in one branch. Average or complete linkage only: the distances "
           "are angle-based, and ward/centroid assume Euclidean geometry.")

refs, _ = view.adapter_set(minimum=2)
view.overlap_table(refs)  # progress bar and error box; the table is cached for what follows
names = [ref[2] for ref in refs]

# 1. Distance and linkage
st.session_state.setdefault("clusters_distance", DISTANCE_OF_METRIC.get(st.session_state.get(view.METRIC), "cosine"))
left, right = st.columns(2)
with left:
    distance = view.choose("Distance", list(DISTANCES), "clusters_distance", format_func=DISTANCES.get)
with right:
    method = st.radio("Linkage", ["average", "complete"], key="clusters_method", horizontal=True)
fit = cache.linkage(refs, distance, method)
heights = [float(h) for h in fit["linkage"][:, 2]] if len(fit["linkage"]) else [0.0]

# 2. The cut: k groups or a distance threshold
left, right = st.columns(2)
with left:
    how = st.radio("Cut by", ["number of groups", "distance threshold"], key="clusters_cut_by", horizontal=True)
with right:
    if how == "number of groups":
        k = st.slider("Groups k", 1, len(refs), min(2, len(refs)), key="clusters_k")
        threshold = None
    else:
        k = None
        threshold = st.slider("Threshold", 0.0, 1.0, round(max(heights) / 2, 3), step=0.005, key="clusters_threshold")
groups = cache.cut(refs, distance, method, k, threshold)

# 3. Dendrogram (drawn from scipy's layout) and the groups
show_figure(figures.dendrogram(fit["dendrogram"], names, metric_label=DISTANCES[distance], threshold=threshold),
            name=f"dendrogram_{distance}_{method}", key="clusters_dendrogram")
st.subheader("Groups")
st.dataframe(pd.DataFrame([{"adapter": names[x], "group": groups[x] + 1, "group size": groups.count(groups[x])}
                           for x in fit["order"]]),
             hide_index=True, width="stretch")

# 4. The distance matrix behind it, in dendrogram order
order = fit["order"]
ordered = [names[x] for x in order]
spec = MetricSpec("distance", f"distance ({distance})", 0.0, 1.0, "Viridis_r", ".3f", DISTANCES[distance])
shown = fit["distance"][order][:, order]  # (N, N)
show_figure(figures.heatmap(shown, ordered, ordered, spec, title=f"Distance · {DISTANCES[distance]}"),
            name=f"distance_{distance}", key="clusters_distance_heatmap", matrix=(shown, ordered, ordered),
            distance=distance, method=method)
