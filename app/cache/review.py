"""`app.cache` section: review (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from typing import Any

import streamlit as st

# --- review --------------------------------------------------------------------------------------
# Proposals themselves are never cached: other users and CLI processes write to the store at any time.

@st.cache_resource(show_spinner=False)
def review_store(url: str) -> Any:
    """One `ReviewStore` (engine + connection pool) per store URL, shared by every session."""
    from analysis.review import ReviewStore

    return ReviewStore(url)


@st.cache_data(show_spinner="Loading the inputs and computing their overlap…", max_entries=16)
def review_overlap(url: str, proposal_id: int, recipe_sha256: str) -> Any:
    """`InputOverlap` of a proposal's inputs; the recipe hash is in the key, the proposal never changes."""
    from analysis.review.evidence import InputOverlap, input_overlap, resolve_input
    from app.components.sources import FolderRefusedError, confine

    proposal = review_store(url).get(proposal_id)
    for record in proposal.inputs:  # a recipe may name any path: the app loads only those under the roots
        found = resolve_input(record, proposal.source_dir)
        if found is not None:
            try:
                confine(found)
            except FolderRefusedError as exc:
                return InputOverlap(False, f"input '{record.name}' is not loaded here: {exc}")
    return input_overlap(proposal)
