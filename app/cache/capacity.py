"""`app.cache` section: capacity (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from app.cache.adapters import AdapterRef
from app.cache.overlap import layers_and_types, overlap_table

# --- capacity ------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=16)
def capacity(refs: tuple[AdapterRef, ...], r: int | None = None) -> list[dict[str, Any]]:
    """Per-module capacity rows (width, union rank, measured overlap, floor, fits_more), with their layer/type."""
    from analysis.capacity import capacity_report
    from analysis.overlap import layer_sort_key

    _, _, parsed = layers_and_types(refs)
    rows = [{**row, "layer": parsed[row["module"]][0], "type": parsed[row["module"]][1]}
            for row in capacity_report(overlap_table(refs), r=r)]
    return sorted(rows, key=lambda row: (layer_sort_key(row["layer"]), row["type"]))  # model order


# --- appended by other pages (merge, review): add a heading per page below ------------------------
