"""Subspaces: for one pair, the principal angles per module and the phi(k, l) grid of Hu et al."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app import cache
from app.components import figures, view
from app.components.display import show_figure

st.title("Subspaces")
st.caption("Two updates collide when their column spaces share directions. Principal angles near 0° are shared "
           "directions, near 90° orthogonal ones. phi(k, l) asks how much of adapter A's top-k directions lies in "
           "adapter B's top-l directions (LoRA paper, section 7 and figure 3).")

refs, _ = view.adapter_set(minimum=2)
table = view.overlap_table(refs)
names = [ref[2] for ref in refs]

# 1. The pair (defaults to the one last opened on the Overlap page)
last = st.session_state.get(view.PAIR) or (names[0], names[1])
st.session_state.setdefault("subspaces_a", last[0] if last[0] in names else names[0])
st.session_state.setdefault("subspaces_b", last[1] if last[1] in names else names[1])
left, right = st.columns(2)
with left:
    name_a = view.choose("Adapter A", names, "subspaces_a", param="a")
with right:
    name_b = view.choose("Adapter B", names, "subspaces_b", param="b")
if name_a == name_b:
    st.warning("Pick two different adapters: an adapter's angles to itself are all 0°.")
i, j = names.index(name_a), names.index(name_b)
st.session_state[view.PAIR] = (name_a, name_b)

# The module to open on: where this pair collides most, unless the link or the user named one
modules = cache.model_order(table)
_, _, parsed = cache.layers_and_types(refs)
if st.session_state.get("subspaces_for_pair") != (name_a, name_b):
    st.session_state["subspaces_for_pair"] = (name_a, name_b)
    hot = cache.most_colliding(refs, i, j) if i != j else modules[0]
    if not view.linked("at"):
        st.session_state["subspaces_module"] = hot
    if not view.linked("mods"):
        st.session_state["subspaces_modules"] = [m for m in modules if parsed[m][0] == parsed[hot][0]][:8]
hot_module = cache.most_colliding(refs, i, j) if i != j else modules[0]
hot_cosine = cache.most_colliding(refs, i, j, "cosine") if i != j else modules[0]
st.caption(f"By subspace similarity (same output directions) this pair collides most at **{hot_module}** "
           f"({table[hot_module].subspace_similarity[i, j]:.3f}); the page opens there. By cosine (same update) "
           + ("it is the same module." if hot_cosine == hot_module else
              f"it is **{hot_cosine}** ({table[hot_cosine].cosine[i, j]:.3f}).")
           + " The Overlap page ranks every pair and module per metric.")

# 2. Principal-angle spectra, one curve per module
st.subheader("Principal angles per module")
chosen = view.choose_many("Modules", modules, "subspaces_modules", param="mods", short=view.module_token,
                          format_func=view.module_token,
                          help="Defaults to the modules of the layer where the pair collides most.")
curves = {m: table[m].principal_angles_deg[i][j] for m in chosen}
if curves:
    width = max(len(a) for a in curves.values())
    padded = np.full((len(curves), width), np.nan)  # (modules, max angles)
    for row, angles in enumerate(curves.values()):
        padded[row, : len(angles)] = angles
    show_figure(figures.angle_spectra(curves, title=f"Principal angles · {name_a} vs {name_b}"),
                name=f"angles_deg_{name_a}_{name_b}", key="subspaces_angles",
                matrix=(padded, list(curves), [f"angle_{k + 1}" for k in range(width)]), unit="degrees")

# 3. phi(k, l) for one module
st.subheader("Subspace similarity grid phi(k, l)")
left, right = st.columns([2, 1])
with left:
    module = view.choose("Module", modules, "subspaces_module", param="at", short=view.module_token)
with right:
    side = view.choose("Space", ["output", "input"], "subspaces_side", param="side", widget=st.radio,
                       horizontal=True,
                       help="output: column spaces (what the updates write); input: row spaces (what they read)")
grid = cache.phi_grid(refs[i], refs[j], module, side)
from analysis.collisions import random_expectation  # noqa: E402

d = table[module].shape[0 if side == "output" else 1]
chance = random_expectation(table[module], "subspace_similarity" if side == "output" else "input_subspace_similarity",
                            i, j)
st.caption(f"Baseline: for random r-dimensional subspaces of R^d, phi is about r/d at full rank; here d = {d}"
           + (f", so chance gives about {chance:.3f} at full rank and max(k, l)/d at (k, l). "
              "Values far above that are shared directions the adapters learned." if chance else "."))
show_figure(figures.phi_grid(grid, name_i=name_a, name_j=name_b, title=f"phi(k, l) · {module} · {side} space"),
            name=f"phi_{name_a}_{name_b}_{module}_{side}", key="subspaces_phi",
            matrix=(grid, [f"k={k + 1}" for k in range(grid.shape[0])], [f"l={l + 1}" for l in range(grid.shape[1])]),
            module=module, side=side)
