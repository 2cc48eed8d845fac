"""Population: a scanned index of many adapters: its map, its families, the neighbours of any adapter,
and a hand-off of a chosen few to the exact pages (Overlap, Merge)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from analysis.errors import AtlasError
from app import cache
from app.components import view
from app.components.adapter_map import show_adapter_map
from app.components.sources import FolderRefusedError, configured_roots, confine

MAP_POINTS = 20_000

st.title("Population")
st.caption("Thousands of adapters at once, from fixed-size sketches (a seeded random projection of each update, "
           "whose inner products estimate the exact ones). Neighbours and families come from the sketches; pick a "
           "few and open them on the exact pages.")

# 1. The index: a folder written by `adapter-atlas scan`, under the server's allowed roots
roots = configured_roots()
text = st.text_input("Index folder", key="population_index",
                     placeholder=str(roots[0] / "index") if roots else "/path/to/index",
                     help="Written by `adapter-atlas scan ROOT... --out DIR`; it must lie under one of: "
                          + (", ".join(str(r) for r in roots) or "(no roots configured: set ADAPTER_ATLAS_ROOTS)"))
if not text.strip():
    st.info("Build an index with `adapter-atlas scan ROOT... --out DIR` (add `--scheduler tcp://host:8786` to run "
            "on a Dask cluster), then type its folder above.")
    st.stop()
try:
    folder = str(confine(text))
    stamp = cache.population_stamp(folder)
    pop = cache.population(folder, stamp)
except (FolderRefusedError, AtlasError, OSError) as exc:
    st.error(str(exc))
    st.stop()
if len(pop) == 0:
    st.warning(f"{folder}: the index holds no readable adapter ({len(pop.failed)} unreadable).")
    st.stop()

common = os.path.commonpath(pop.paths) if len(pop) > 1 else str(Path(pop.paths[0]).parent)
names = [os.path.relpath(p, common) if p != common else Path(p).name for p in pop.paths]
left, middle, right = st.columns(3)
left.metric("Adapters", f"{len(pop):,}")
middle.metric("Unreadable at scan time", len(pop.failed))
right.metric("Sketch", f"{pop.config.k} × {pop.config.k}", help=f"seed {pop.config.seed}; "
             f"{pop.config.k ** 2 * 4 / 1024:.0f} KB per adapter")

# 2. The map, coloured by family
threshold = st.slider("Family cut (cosine distance)", 0.1, 1.5, 0.6, 0.05, key="population_threshold",
                      help="Average-linkage families stop merging at this distance (1 - cosine).")
amap = cache.population_map(folder, stamp, threshold)
shown = np.arange(len(pop))
if len(pop) > MAP_POINTS:  # a browser draws ~20k WebGL points smoothly; beyond, a fixed random sample
    shown = np.sort(np.random.default_rng(0).choice(len(pop), MAP_POINTS, replace=False))
event = show_adapter_map(amap["coords"][shown], [names[i] for i in shown], amap["labels"][shown],
                         hover=[pop.paths[i] for i in shown], key="population_map", name="population_map",
                         title=f"Population map · {len(shown):,} of {len(pop):,} adapters", label_title="family",
                         on_select="rerun", index=folder)
st.caption(f"{len(amap['sizes'])} families ({amap['method']}). Axes: the top two principal components of the "
           "normalised sketches" + (f"; a fixed random sample of {MAP_POINTS:,} points is drawn" if len(shown) < len(pop)
                                    else "") + ". Click a point to search its neighbours below.")
with st.expander("Families"):
    st.dataframe(pd.DataFrame({"family": range(1, len(amap["sizes"]) + 1), "adapters": amap["sizes"]}),
                 hide_index=True, width="stretch")
if pop.failed:
    with st.expander(f"Unreadable at scan time ({len(pop.failed)})"):
        st.dataframe(pd.DataFrame(pop.failed, columns=["path", "reason"]), hide_index=True, width="stretch")

# 3. Neighbours of one adapter (picked here or by clicking the map)
points = getattr(getattr(event, "selection", None), "points", None) or []
clicked = points[0].get("customdata", [None])[0] if points and isinstance(points[0], dict) else None
if clicked in names and clicked != st.session_state.get("population_last_click"):
    st.session_state["population_last_click"] = clicked
    st.session_state["population_query"] = clicked
st.subheader("Neighbours")
left, middle, right = st.columns([4, 1, 1])
with left:
    query = view.choose("Adapter", names, "population_query")
with middle:
    k = st.number_input("How many", 1, 100, 10, key="population_k")
with right:
    exact = st.checkbox("Exact re-rank", key="population_exact",
                        help="Load the best candidates and re-rank them by the exact factored cosine.")
query_path = pop.paths[names.index(query)]
try:
    rows = cache.population_neighbors(folder, stamp, query_path, int(k), exact)
except AtlasError as exc:
    st.error(str(exc))
    st.stop()
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"similarity": st.column_config.NumberColumn("cosine" + (" (exact)" if exact else " (sketch)"),
                                                                        format="%.4f")})

# 4. Hand a selection to the exact pages (only adapters the server may open)
st.subheader("Open on the exact pages")
offered = [query_path] + [r["adapter"] for r in rows]
chosen = st.multiselect("Adapters to open", offered, default=offered[: min(5, len(offered))],
                        key=f"population_selection_{query_path}", format_func=lambda p: names[pop.position(p)])
allowed, refused = [], []
for p in chosen:
    try:
        allowed.append(str(confine(p)))
    except FolderRefusedError:
        refused.append(p)
if refused:
    st.warning(f"{len(refused)} chosen adapter(s) lie outside the allowed roots and cannot be opened here.")
left, right = st.columns(2)
if left.button("Open in Overlap", disabled=len(allowed) < 2, key="population_to_overlap", icon=":material/grid_on:"):
    view.add_adapters(allowed, replace=True)
    st.switch_page("app_pages/overlap.py")
if right.button("Open in Merge", disabled=len(allowed) < 2, key="population_to_merge", icon=":material/merge:"):
    view.add_adapters(allowed, replace=True)
    st.switch_page("app_pages/merge.py")
