"""`app.cache` section: population (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

# --- population ----------------------------------------------------------------------------------
# An index is keyed by its folder and a stamp of its files (catalog mtime, part count), so a rescan is a new
# entry. The loaded sketches are a resource (one copy per process, read-only); map, families and neighbour
# lists are data.

def population_stamp(folder: str) -> tuple[int, int]:
    """(catalog mtime_ns, number of sketch parts): changes whenever `adapter-atlas scan` or `compact` rewrites
    the index (a few stat calls: the page never rescans or rereads the index per click)."""
    root = Path(folder)
    catalog = root / "catalog.parquet"
    manifest = root / "ann" / "manifest.json"
    mtime = max(catalog.stat().st_mtime_ns if catalog.exists() else 0,
                manifest.stat().st_mtime_ns if manifest.exists() else 0)
    return mtime, len(list((root / "sketches").glob("part-*.parquet")))


@st.cache_resource(show_spinner="Opening the population index…", max_entries=4)
def population(folder: str, stamp: tuple[int, int]) -> Any:
    from analysis.population.query import open_population

    return open_population(folder)


@st.cache_data(show_spinner="Placing adapters and finding families…", max_entries=8)
def population_map(folder: str, stamp: tuple[int, int]) -> dict[str, Any]:
    """{"coords" (N, 2), "labels" (N,), "sizes", "cohesion", "base", "per_base", "warnings", "method"}."""
    from analysis.population.families import families
    from analysis.population.query import map_2d

    pop = population(folder, stamp)
    if len(pop) == 0:
        return {"coords": np.zeros((0, 2)), "labels": np.zeros(0, dtype=int), "sizes": [], "cohesion": [],
                "base": [], "per_base": [], "warnings": [], "method": ""}
    fam = families(pop)
    return {"coords": map_2d(pop), "labels": fam.labels, "sizes": fam.sizes, "cohesion": fam.cohesion,
            "base": fam.base, "per_base": fam.per_base, "warnings": fam.warnings, "method": fam.method}


@st.cache_data(show_spinner="Searching neighbours…", max_entries=256)
def population_neighbors(folder: str, stamp: tuple[int, int], adapter: str, k: int, exact: bool) -> list[dict]:
    from analysis.population.query import neighbors
    from app.components.sources import FolderRefusedError, confine

    def under_roots(path: str) -> bool:  # the exact re-rank loads files: only those a visitor may open
        try:
            confine(path)
        except FolderRefusedError:
            return False
        return True

    return neighbors(population(folder, stamp), adapter, k, exact=exact, may_load=under_roots)
