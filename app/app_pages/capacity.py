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
    kind = view.choose("Module type", types, "capacity_type", param="type")
with right:
    view.url_state("capacity_r", "r", kind=int)
    st.session_state.setdefault("capacity_r", None)  # empty: the largest rank present
    r = st.number_input("Rank r of one more adapter", min_value=1, max_value=4096, step=1,
                        key="capacity_r", placeholder="largest rank present",
                        help="How many more rank-r adapters fit orthogonally to everything already there.")
rows = cache.capacity(refs, int(r) if r else None)
rank_text = f"rank {int(r)}" if r else f"rank {max(max(x['ranks']) for x in rows)} (the largest present)"

# 2. Whole-set summary: each figure says over what it is taken
occupancy = max(rows, key=lambda row: row["sum_rank"] / max(row["width"], 1))
fits = min(rows, key=lambda x: x["fits_more"] if x["fits_more"] is not None else 1 << 30)
st.markdown(f"**All {len(refs)} adapters, all {len(rows)} shared modules** (every layer and type):")
a, b, c = st.columns(3)
a.metric("Most crowded module: dims used / width", f"{occupancy['sum_rank']} / {occupancy['width']}",
         help=f"Sum of the adapters' ranks against the module's width d, at {occupancy['module']}.")
a.caption(f"at `{view.module_token(occupancy['module'])}`")
b.metric("Mean measured overlap, all modules", f"{sum(x['mean_overlap'] for x in rows) / len(rows):.3f}",
         help="Mean normalised overlap of every pair, averaged over modules.")
c.metric(f"More adapters of {rank_text.split(' (')[0]} that still fit", fits["fits_more"],
         help="Orthogonally to everything already there, in the module with the least room.")
c.caption(f"limited by `{view.module_token(fits['module'])}`, at {rank_text}")

if all(x["floor"] == 0 for x in rows):
    st.caption("N·r ≤ d in every module here: the floor is 0 (the red line on the axis), so all the overlap "
               "measured below is learned, not forced by crowding.")

# 3. Per layer for the chosen module type
chosen = [row for row in rows if row["type"] == kind]
labels = [str(row["layer"]) for row in chosen]
show_figure(figures.capacity_chart(labels, [x["mean_overlap"] for x in chosen], [x["floor"] for x in chosen],
                                   title=f"Measured mean overlap vs the unavoidable floor · {kind}, per layer"),
            name=f"capacity_overlap_{kind}", key="capacity_overlap")
show_figure(figures.rank_vs_width(labels, [x["union_effective_rank"] for x in chosen],
                                  [x["width"] for x in chosen],
                                  title=f"Union-subspace effective rank vs width · {kind}, per layer"),
            name=f"capacity_rank_{kind}", key="capacity_rank")

# 4. Every module (layer and type name it; the full module name is in the CSV)
def _ranks(ranks: list[int]) -> str:
    """'8 × 10' for ten adapters of rank 8; the list when they differ."""
    return f"{ranks[0]} × {len(ranks)}" if len(set(ranks)) == 1 else ", ".join(map(str, ranks))


st.subheader("All modules")
table = pd.DataFrame([{
    "module": x["module"], "layer": x["layer"] if isinstance(x["layer"], int) else None, "type": x["type"],
    "width d": x["width"],
    "ranks": _ranks(x["ranks"]), "union rank": x["union_rank"],
    "eff. rank": x["union_effective_rank"], "overlap": x["mean_overlap"], "floor": x["floor"],
    "excess": x["excess"], "more fit": x["fits_more"], "of rank": x["fits_more_rank"],
} for x in rows])
table["layer"] = table["layer"].astype("Int64")  # sorts 0, 1, 2, ..., 10
st.dataframe(table.drop(columns=["module"]), hide_index=True, width="stretch", height=420,
             column_config={**{k: st.column_config.NumberColumn(format="%.3f", width="small")
                               for k in ("eff. rank", "overlap", "floor", "excess")},
                            **{k: st.column_config.NumberColumn(width="small")
                               for k in ("width d", "union rank", "more fit", "of rank")},
                            "layer": st.column_config.NumberColumn(format="%d", width="small"),
                            "eff. rank": st.column_config.NumberColumn(
                                format="%.3f", width="small", help="effective rank of the union of the subspaces"),
                            "overlap": st.column_config.NumberColumn(
                                format="%.3f", width="small", help="measured mean normalised overlap"),
                            "ranks": st.column_config.TextColumn(width="small"),
                            "type": st.column_config.TextColumn(width="medium")})
st.download_button("Table (CSV)", table.to_csv(index=False), file_name="capacity.csv", mime="text/csv",
                   key="capacity_csv", on_click="ignore", icon=":material/table:")
