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
    distance = view.choose("Distance", list(DISTANCES), "clusters_distance", param="distance",
                           format_func=DISTANCES.get)
with right:
    method = view.choose("Linkage", ["average", "complete"], "clusters_method", param="linkage", widget=st.radio,
                         horizontal=True)
fit = cache.linkage(refs, distance, method)
heights = sorted(float(h) for h in fit["linkage"][:, 2]) if len(fit["linkage"]) else [0.0]
best = cache.best_k(refs, distance, method)

# 2. The cut: k groups (default: the best silhouette) or a distance threshold (default: that cut's height)
CUTS = {"k": "number of groups", "threshold": "distance threshold"}
left, right = st.columns(2)
with left:
    how = view.choose("Cut by", list(CUTS), "clusters_cut_by", param="cut", widget=st.radio, format_func=CUTS.get,
                      horizontal=True)
with right:
    if how == "k":
        view.url_state("clusters_k", "k", default=best, kind=int)
        st.session_state["clusters_k"] = min(max(int(st.session_state["clusters_k"]), 1), len(refs))
        k = st.slider("Groups k", 1, len(refs), key="clusters_k",
                      help=f"{best} groups score the best silhouette (scikit-learn) on these distances.")
        threshold = cache.cut_height(refs, distance, method, k)
    else:
        lo, hi = round(heights[0] - 0.005, 3), round(heights[-1] + 0.005, 3)
        view.url_state("clusters_threshold", "t", default=round(cache.cut_height(refs, distance, method, best), 3),
                       kind=float)
        st.session_state["clusters_threshold"] = min(max(float(st.session_state["clusters_threshold"]), lo), hi)
        threshold = st.slider("Threshold", lo, hi, step=0.001, format="%.3f", key="clusters_threshold",
                              help="Adapters merged below this distance form one group. The range spans the "
                                   "merges of this tree.")
        k = None
groups = cache.cut(refs, distance, method, k, None if k is not None else threshold)
n_groups = max(groups) + 1

# 3. Dendrogram (drawn from scipy's layout) with the cut and the group colours, then the groups
show_figure(figures.dendrogram(fit["dendrogram"], names, metric_label=DISTANCES[distance], threshold=threshold,
                               groups=groups,
                               cut_label=f"cut at {threshold:.3f} → {n_groups} group{'s' if n_groups > 1 else ''}"),
            name=f"dendrogram_{distance}_{method}", key="clusters_dendrogram")
st.caption(f"The distance axis spans the merges ({heights[0]:.3f} to {heights[-1]:.3f}), not 0 to 1, so close "
           "merges stay apart. Links inside a group take its colour; grey links join groups above the cut.")
st.subheader("Groups")
rows = [{"group": groups[x] + 1, "adapter": names[x], "group size": groups.count(groups[x])} for x in fit["order"]]
st.dataframe(pd.DataFrame(rows).style.apply(
    lambda col: [f"color: {figures.group_colour(g - 1)}; font-weight: 600" for g in col], subset=["group"]),
    hide_index=True, width="stretch")
st.caption("**What a group means for merging.** Adapters in one group write into shared directions: merged "
           "together they interfere most, so a merge within a group needs isolation of each task's core (or lower "
           "weights) and a measurement before it is trusted. Adapters in different groups are close to orthogonal "
           "and usually merge with little interference. Take one group, or one adapter from each group, to the "
           "Merge page and measure both against your bar.")

# 4. The distance matrix behind it, in dendrogram order
order = fit["order"]
ordered = [names[x] for x in order]
spec = MetricSpec("distance", f"distance ({distance})", 0.0, 1.0, "Viridis_r", ".3f", DISTANCES[distance])
shown = fit["distance"][order][:, order]  # (N, N)
d_lo, d_hi = figures.color_range(shown, spec)
show_figure(figures.heatmap(shown, ordered, ordered, spec, title=f"Distance · {DISTANCES[distance]}",
                            mask_diagonal=True, zrange=(d_lo, d_hi)),
            name=f"distance_{distance}", key="clusters_distance_heatmap", matrix=(shown, ordered, ordered),
            distance=distance, method=method)
st.caption(f"Colours span the off-diagonal distances, {d_lo:.3f} to {d_hi:.3f}.")
