"""Adapters: choose the set, then see what each adapter holds and how its rank is used."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.adapters.safe_text import markdown_text
from app import cache
from app.components import figures, pickers, view
from app.components.display import show_figure

st.title("Adapters")
st.markdown("**Adapter Atlas helps you decide whether, and how, to merge LoRA adapters of one base model.** It shows "
            "where their updates collide (Overlap, Subspaces, Clusters, Capacity), compares merge methods on the "
            "weights alone, measures the merged adapter on your model and data against a bar you set, and hands "
            "the result to a reviewer (Merge, Review).")
st.caption("Every format is read into one factored model: dW = scale · B · A per module. "
           "Pick the adapters below; every other page works on this set.")
with st.container(horizontal=True):
    st.page_link("app_pages/overlap.py", label="Next: Overlap — which adapters collide, and where",
                 icon=":material/grid_on:")
    st.page_link("app_pages/merge.py", label="Then: Merge — compare, measure, decide", icon=":material/merge:")

# 1. Where the adapters come from
sample_tab, upload_tab, folder_tab = st.tabs(["Sample set", "Upload", "Server folder"])
with sample_tab:
    pickers.sample_block()
with upload_tab:
    pickers.upload_block()
with folder_tab:
    pickers.folder_block()

# 2. The open set (a multiselect over everything offered so far)
known = st.session_state.get(view.KNOWN, [])
st.session_state[view.ADAPTERS] = [p for p in st.session_state.get(view.ADAPTERS, []) if p in known]
st.multiselect("Open adapters", known, key=view.ADAPTERS, format_func=view.adapter_label,
               help="Named relative to the allowed server folders; the link of this page names them the same way.")

refs, _ = view.adapter_set()

# 3. Inventory: one row per adapter
cards = [cache.describe(ref) for ref in refs]
st.subheader("Inventory")
st.dataframe(pd.DataFrame([{
    "adapter": c["name"], "format": c["format"], "base model": c.get("base_model") or "unknown",
    "modules": len(c["modules"]),
    "ranks": ", ".join(str(r) for r in sorted({m["rank"] for m in c["modules"]})),
    "scales": ", ".join(f"{s:g}" for s in sorted({round(float(m["scale"]), 6) for m in c["modules"]})),
    "total norm": sum(float(m["norm"]) ** 2 for m in c["modules"]) ** 0.5,
    "extras": len(c.get("extras", [])), "warnings": len(c.get("warnings", [])),
    "sha256": c["sha256"][:12],
} for c in cards]), hide_index=True, width="stretch",
    column_config={"total norm": st.column_config.NumberColumn(format="%.4g")})

bases = {c.get("base_model") for c in cards if c.get("base_model")}
if len(bases) > 1:
    st.warning("These adapters name different base models: " + ", ".join(markdown_text(b) for b in sorted(bases))
               + ". Overlap is only computed on modules with the same name and shape.")

# 4. Per adapter: modules (layer as a number, so it sorts 0, 1, 2, ..., 10), extra tensors, warnings
def module_table(modules: list[dict]) -> pd.DataFrame:
    from analysis.overlap import parse_module_name

    order = {m: k for k, m in enumerate(cache.model_order([m["name"] for m in modules]))}
    rows = []
    for m in sorted(modules, key=lambda m: order[m["name"]]):
        layer, kind = parse_module_name(m["name"])
        rows.append({"layer": layer if isinstance(layer, int) else None, "type": kind, "rank": m["rank"],
                     "shape": " × ".join(map(str, m["shape"])), "scale": m["scale"], "norm": m["norm"],
                     "kind": m["kind"], "module": m["name"]})
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return table


for card in cards:
    with st.expander(f"{card['name']} — {len(card['modules'])} modules, format {card['format']}"):
        for warning in card.get("warnings", []):
            st.warning(markdown_text(warning, limit=None))  # warnings quote file contents (base_model_name_or_path): literal text
        st.dataframe(module_table(card["modules"]), hide_index=True, width="stretch",
                     column_config={"norm": st.column_config.NumberColumn(format="%.4g"),
                                    "scale": st.column_config.NumberColumn(format="%.4g"),
                                    "layer": st.column_config.NumberColumn(format="%d", width="small")})
        if card.get("extras"):
            st.caption("Non-LoRA tensors kept alongside (never merged as LoRA):")
            st.dataframe(pd.DataFrame(card["extras"]), hide_index=True, width="stretch")

# 5. Spectrum of one module: how much of the rank carries energy
st.subheader("Singular values of one module")
names = [ref[2] for ref in refs]
left, right = st.columns([1, 2])
with left:
    chosen = view.choose("Adapter", names, "adapters_spectrum_adapter", param="spectrum")
    ref = refs[names.index(chosen)]
    module = view.choose("Module", cache.model_order(cache.load_adapter(*ref).modules), view.MODULE)
if module:
    s = cache.singular_values(ref, module)
    with right:
        show_figure(figures.spectrum_bar(s, title=f"{chosen} · {module}"), name=f"spectrum_{chosen}_{module}",
                    key="adapters_spectrum")
