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
FAMILY_WARN = 50


def hand_off(paths: list[str], what: str, key: str) -> None:
    """Buttons that open `paths` on Overlap / Merge: every one the server may open, the others named."""
    allowed, refused = [], []
    for p in paths:
        try:
            allowed.append(str(confine(p)))
        except FolderRefusedError:
            refused.append(p)
    if refused:
        st.warning(f"{len(refused)} of {len(paths)} adapters of {what} lie outside the allowed roots and cannot be "
                   "opened here: " + ", ".join(refused[:3]) + (", ..." if len(refused) > 3 else ""))
    left, right = st.columns(2)
    label = f"{len(allowed)} adapter{'s' if len(allowed) != 1 else ''}"
    if left.button(f"Open {label} in Overlap", disabled=len(allowed) < 2, key=f"{key}_to_overlap",
                   icon=":material/grid_on:"):
        view.add_adapters(allowed, replace=True)
        st.switch_page("app_pages/overlap.py")
    if right.button(f"Open {label} in Merge", disabled=len(allowed) < 2, key=f"{key}_to_merge",
                    icon=":material/merge:"):
        view.add_adapters(allowed, replace=True)
        st.switch_page("app_pages/merge.py")


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
amap = cache.population_map(folder, stamp)
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
for line in amap["warnings"]:
    st.warning(line)
if len(pop.bases) > 1:
    st.info(f"{len(pop.bases)} bases in this index (base model and module layout): neighbours and families never "
            "mix them.")

# 3. Families: sizes, cohesion, and a family handed whole to the exact pages
st.subheader("Families")
base_names = [f"{b['base_model'] or '(no base named)'} [{b['layout'][:8]}]" for b in pop.bases]
families_table = pd.DataFrame({"family": range(len(amap["sizes"])), "adapters": amap["sizes"],
                               "cohesion": amap["cohesion"], "base": [base_names[b] for b in amap["base"]]})
picked = st.dataframe(families_table, hide_index=True, width="stretch", key="population_families",
                      on_select="rerun", selection_mode="single-row",
                      column_config={"cohesion": st.column_config.NumberColumn(
                          "cohesion", format="%.3f", help="Mean pairwise sketch cosine of the family's members "
                                                          "(empty for a family of one)")})
st.caption("Chance level per base (sketch cosine of random pairs, median ± spread) and the cut above it: "
           + "; ".join(f"{base_names[i]}: {f.get('centre')} ± {f['noise']}, cut {f['cut']}"
                       for i, f in enumerate(amap["per_base"])) + ". Select a row to open the whole family.")
selected = list(getattr(getattr(picked, "selection", None), "rows", None) or [])
if selected:
    family = int(families_table["family"].iloc[selected[0]])
    members = [pop.paths[i] for i in np.flatnonzero(amap["labels"] == family)]
    if len(members) > FAMILY_WARN:
        st.warning(f"Family {family} has {len(members)} adapters: the exact pages compare every pair "
                   f"({len(members) * (len(members) - 1) // 2:,} pairs); it is sent whole, expect a wait.")
    hand_off(members, f"family {family}", "population_family")
if pop.failed:
    with st.expander(f"Unreadable at scan time ({len(pop.failed)})"):
        st.dataframe(pd.DataFrame(pop.failed, columns=["path", "reason"]), hide_index=True, width="stretch")

# 4. Neighbours of one adapter (picked here or by clicking the map)
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

# 5. Hand a selection to the exact pages (only adapters the server may open)
st.subheader("Open on the exact pages")
offered = list(dict.fromkeys([query_path] + [r["adapter"] for r in rows]))
chosen = st.multiselect("Adapters to open", offered, default=offered[: min(5, len(offered))],
                        key=f"population_selection_{query_path}", format_func=lambda p: names[pop.position(p)])
hand_off(chosen, "the chosen adapters", "population")
