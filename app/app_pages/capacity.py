"""Capacity: how much of each layer the adapters occupy, and how much overlap no arrangement could avoid."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import cache
from app.components import figures, view
from app.components.display import show_figure

st.title("Capacity")
st.caption("A layer of width d holds at most d / r mutually orthogonal rank-r updates. Past that, overlap is forced: "
           "N subspaces of dimension r have mean normalised overlap at least (N·r/d − 1)/(N − 1). "
           "Overlap far above this floor is learned, shared structure; overlap near it is crowding.")

refs, _ = view.adapter_set(minimum=2)
view.overlap_table(refs)  # progress bar and error box; the table is cached for what follows
layers, types, _ = cache.layers_and_types(refs)

# 1. The rank of a hypothetical new adapter, and the module type to follow across layers
left, right = st.columns(2)
with left:
    kind = view.choose("Module type", types, "capacity_type")
with right:
    r = st.number_input("Rank r of one more adapter", min_value=1, max_value=4096, value=None, step=1,
                        key="capacity_r", placeholder="largest rank present",
                        help="How many more rank-r adapters fit orthogonally to everything already there.")
rows = cache.capacity(refs, int(r) if r else None)

# 2. Whole-set summary
occupancy = max(rows, key=lambda row: row["sum_rank"] / max(row["width"], 1))
a, b, c = st.columns(3)
a.metric("Most crowded module", f"{occupancy['sum_rank']}/{occupancy['width']} dims", help=occupancy["module"])
b.metric("Mean measured overlap", f"{sum(x['mean_overlap'] for x in rows) / len(rows):.3f}")
c.metric("Fewest extra adapters that fit", min(x["fits_more"] for x in rows if x["fits_more"] is not None))

if all(x["floor"] == 0 for x in rows):
    st.caption("N·r ≤ d in every module here: the floor is 0, so all the overlap measured below is learned, "
               "not forced by crowding.")

# 3. Per layer for the chosen module type
chosen = [row for row in rows if row["type"] == kind]
labels = [str(row["layer"]) for row in chosen]
show_figure(figures.capacity_chart(labels, [x["mean_overlap"] for x in chosen], [x["floor"] for x in chosen],
                                   title=f"Measured mean overlap vs the unavoidable floor · {kind}"),
            name=f"capacity_overlap_{kind}", key="capacity_overlap")
show_figure(figures.rank_vs_width(labels, [x["union_effective_rank"] for x in chosen],
                                  [x["width"] for x in chosen],
                                  title=f"Union-subspace effective rank vs width · {kind}"),
            name=f"capacity_rank_{kind}", key="capacity_rank")

# 4. Every module
st.subheader("All modules")
table = pd.DataFrame([{
    "module": x["module"], "layer": str(x["layer"]), "type": x["type"], "width d": x["width"],
    "ranks": ", ".join(map(str, x["ranks"])), "union rank": x["union_rank"],
    "union eff. rank": x["union_effective_rank"], "mean overlap": x["mean_overlap"], "floor": x["floor"],
    "excess": x["excess"], "more fit": x["fits_more"], "of rank": x["fits_more_rank"],
} for x in rows])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={k: st.column_config.NumberColumn(format="%.3f")
                            for k in ("union eff. rank", "mean overlap", "floor", "excess")})
st.download_button("Table (CSV)", table.to_csv(index=False), file_name="capacity.csv", mime="text/csv",
                   key="capacity_csv", on_click="ignore")
