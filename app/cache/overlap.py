"""`app.cache` section: overlap (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from analysis.errors import AtlasError
from app.cache.adapters import AdapterRef, Progress, adapters_of, load_adapter, model_order

# --- overlap -------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=32)
def shared_modules(refs: tuple[AdapterRef, ...], modules_regex: str | None = None) -> list[str]:
    from analysis.overlap import shared_modules as _shared

    return list(_shared(adapters_of(refs), modules_regex))


@st.cache_data(show_spinner=False, max_entries=4096)
def module_overlap(refs: tuple[AdapterRef, ...], module: str) -> Any:
    """One module's all-pairs `ModuleOverlap`, cached on its own."""
    from analysis.overlap import module_overlap as _module

    return _module([a.modules[module] for a in adapters_of(refs)], [ref[2] for ref in refs], module)


@st.cache_resource(show_spinner=False)
def _whole_tables() -> dict[tuple[tuple[AdapterRef, ...], str | None], dict[str, Any]]:
    """Assembled tables by (refs, regex), shared read-only by all sessions: a hit costs no unpickling."""
    return {}


def overlap_ready(refs: tuple[AdapterRef, ...], modules_regex: str | None = None) -> bool:
    """Whether the whole table of this set is computed (by the warm-up or an earlier visit)."""
    return (tuple(refs), modules_regex) in _whole_tables()


def overlap_table(refs: tuple[AdapterRef, ...], modules_regex: str | None = None,
                  progress: Progress = None) -> dict[str, Any]:
    """`analysis.overlap.overlap_table`, assembled from per-module cached pieces.

    Caching module by module (rather than the whole table in one `st.cache_data` call) lets the
    page drive an `st.progress` bar from outside the cache: Streamlit cannot replay elements a
    cached function wrote into a container created outside it. The assembled table is then kept
    whole per set (the refs carry each adapter's content sha256), so later pages pay nothing.
    """
    memo, key = _whole_tables(), (tuple(refs), modules_regex)
    if key in memo:
        return memo[key]
    modules = shared_modules(refs, modules_regex)
    table: dict[str, Any] = {}
    for done, m in enumerate(modules, start=1):
        table[m] = module_overlap(refs, m)
        if progress is not None:
            progress(done, len(modules), m)
    while len(memo) >= 16:  # oldest set out first
        memo.pop(next(iter(memo)))
    memo[key] = table
    return table


@st.cache_data(show_spinner=False, max_entries=16)
def layers_and_types(refs: tuple[AdapterRef, ...], modules_regex: str | None = None
                     ) -> tuple[list[int | str], list[str], dict[str, tuple[int | str, str]]]:
    """Layers (model order), module types, and the (layer, type) of every shared module."""
    from analysis.overlap import layer_sort_key, parse_module_name

    parsed = {m: parse_module_name(m) for m in shared_modules(refs, modules_regex)}
    layers = sorted({lt[0] for lt in parsed.values()}, key=layer_sort_key)
    types = sorted({lt[1] for lt in parsed.values()})
    return layers, types, parsed


@st.cache_data(show_spinner=False, max_entries=64)
def aggregated(refs: tuple[AdapterRef, ...], metric: str, layer: int | str | None, module_type: str | None,
               modules_regex: str | None = None) -> np.ndarray:
    """Adapter x adapter matrix of one metric over the modules of one layer and/or type (None = all)."""
    from analysis.overlap import aggregate

    _, _, parsed = layers_and_types(refs, modules_regex)
    chosen = [m for m, (lay, kind) in parsed.items()
              if (layer is None or lay == layer) and (module_type is None or kind == module_type)]
    if not chosen:
        raise AtlasError(f"no shared module at layer {layer} with type {module_type}")
    return np.asarray(aggregate(overlap_table(refs, modules_regex), metric, modules=chosen))  # (N, N)


@st.cache_data(show_spinner=False, max_entries=64)
def pair_matrix(refs: tuple[AdapterRef, ...], i: int, j: int, metric: str,
                modules_regex: str | None = None) -> tuple[list[Any], list[str], np.ndarray]:
    from analysis.overlap import pair_layer_module_matrix

    layers, types, matrix = pair_layer_module_matrix(overlap_table(refs, modules_regex), i, j, metric)
    return list(layers), list(types), np.asarray(matrix, dtype=float)  # (L, T)


# --- subspaces -----------------------------------------------------------------------------------

def most_colliding(refs: tuple[AdapterRef, ...], i: int, j: int, metric: str = "subspace_similarity") -> str:
    """The module where adapters i and j overlap most (first in model order on ties)."""
    table = overlap_table(refs)
    sign = -1.0 if metric == "mean_angle_deg" else 1.0  # small angles collide
    return max(model_order(table), key=lambda m: sign * float(getattr(table[m], metric)[i, j]))


@st.cache_data(show_spinner=False, max_entries=64)
def phi_grid(ref_i: AdapterRef, ref_j: AdapterRef, module: str, side: str = "output") -> np.ndarray:
    """phi(k, l) of Hu et al. between the top singular directions of two adapters at one module."""
    from analysis.linalg import delta_svd, subspace_similarity_grid

    u_i, _, v_i = delta_svd(load_adapter(*ref_i).modules[module])  # (n_out, r_i), _, (n_in, r_i)
    u_j, _, v_j = delta_svd(load_adapter(*ref_j).modules[module])  # (n_out, r_j), _, (n_in, r_j)
    if side == "input":
        return subspace_similarity_grid(v_i, v_j)  # (r_i, r_j)
    return subspace_similarity_grid(u_i, u_j)  # (r_i, r_j)


@st.cache_data(show_spinner=False, max_entries=32)
def ranked(refs: tuple[AdapterRef, ...], metric: str, top: int = 10) -> tuple[list[dict], list[dict]]:
    """(every pair aggregated over modules, the `top` (module, pair) cells) by `metric`, most colliding first,
    each cell with what random subspaces of its ranks give (`analysis.collisions`)."""
    from dataclasses import asdict

    from analysis.collisions import ranked_collisions, ranked_pairs

    table = overlap_table(refs)
    return ([asdict(c) for c in ranked_pairs(table, metric)],
            [asdict(c) for c in ranked_collisions(table, metric, top)])
