"""`app.cache` section: clustering (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from analysis.errors import AtlasError
from app.cache.adapters import AdapterRef
from app.cache.overlap import overlap_table

# --- clustering ----------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=32)
def linkage(refs: tuple[AdapterRef, ...], metric: str, method: str,
            modules_regex: str | None = None) -> dict[str, Any]:
    """Distance matrix, linkage and dendrogram layout as plain data (the fitted object is not kept)."""
    from analysis.clustering import Linkage, adapter_distance

    labels = [ref[2] for ref in refs]
    distance = np.asarray(adapter_distance(overlap_table(refs, modules_regex), metric))  # (N, N)
    fitted = Linkage(method=method).fit(distance, labels)
    return {"distance": distance, "labels": labels, "linkage": np.asarray(fitted.linkage_),
            "order": [int(k) for k in fitted.order_], "dendrogram": fitted.dendrogram_}


@st.cache_data(show_spinner=False, max_entries=64)
def cut(refs: tuple[AdapterRef, ...], metric: str, method: str, k: int | None, threshold: float | None,
        modules_regex: str | None = None) -> list[int]:
    """Group label per adapter for a cut at k groups or at a distance threshold."""
    from analysis.clustering import Linkage, adapter_distance

    distance = np.asarray(adapter_distance(overlap_table(refs, modules_regex), metric))  # (N, N)
    fitted = Linkage(method=method).fit(distance, [ref[2] for ref in refs])
    raw = fitted.cut(k=k, threshold=threshold)
    seen: dict[int, int] = {}
    for leaf in fitted.order_:  # number the groups as they appear along the dendrogram, left to right
        seen.setdefault(int(raw[leaf]), len(seen))
    return [seen[int(g)] for g in raw]


def cut_height(refs: tuple[AdapterRef, ...], metric: str, method: str, k: int) -> float:
    """The distance at which this set's tree falls into k groups (where the cut line is drawn)."""
    from analysis.clustering import cut_height as _height

    return _height(linkage(refs, metric, method)["linkage"], k)


def dendrogram_order(refs: tuple[AdapterRef, ...], metric: str, modules_regex: str | None = None) -> list[int]:
    """Adapters in dendrogram order (average linkage on the metric's distance), similar ones side by side."""
    from app.components.metrics import DISTANCE_OF_METRIC

    if len(refs) < 3:
        return list(range(len(refs)))
    try:
        return linkage(refs, DISTANCE_OF_METRIC.get(metric, "cosine"), "average", modules_regex)["order"]
    except (ImportError, AtlasError, ValueError):
        return list(range(len(refs)))


@st.cache_data(show_spinner=False, max_entries=32)
def adapter_map(refs: tuple[AdapterRef, ...], metric: str, method: str = "average", k: int | None = None,
                neighbours: int = 3) -> dict[str, Any]:
    """2-D map of the set from its distance matrix (MDS, t-SNE for many), its groups and nearest neighbours."""
    from analysis.embedding import embed_distances, nearest_neighbours, stress

    fit = linkage(refs, metric, method)
    distance = fit["distance"]  # (N, N)
    coords = embed_distances(distance, seed=0)  # (N, 2)
    groups = cut(refs, metric, method, k if k is not None else best_k(refs, metric, method), None)
    return {"coords": coords, "groups": groups, "distance": distance,
            "neighbours": nearest_neighbours(distance, neighbours), "stress": stress(distance, coords)}


@st.cache_data(show_spinner=False, max_entries=32)
def best_k(refs: tuple[AdapterRef, ...], metric: str, method: str) -> int:
    """The number of groups with the best silhouette (scikit-learn) on the precomputed distances."""
    from analysis.clustering import best_cut

    fit = linkage(refs, metric, method)
    return int(best_cut(fit["distance"], fit["linkage"])[0])
