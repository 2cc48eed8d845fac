"""The three ways to choose adapters (sample set, upload, server folder), each a small Streamlit block.

Each block ends in `view.add_adapters(...)` on success and in one `st.error` line on failure, so a
bad upload or a refused folder never stops the app.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from analysis.errors import AtlasError
from app import cache
from app.components import view
from app.components.sources import configured_roots, default_adapter_paths, resolve_server_folder, save_upload
from app.components.upload_session import current_area

SEEN_UPLOADS = "adapters_seen_uploads"  # upload batches already opened, so a removed one stays removed


def open_upload(files: list[tuple[str, bytes]]) -> str | None:
    """Save one upload batch, check it loads, add it to the set. Returns its path, or None after an error box."""
    try:
        path = save_upload(files, current_area())
    except AtlasError as exc:
        st.error(f"Upload refused: {exc}")
        return None
    _, _, errors = cache.load_set([str(path)])
    if errors:
        st.error(f"Upload could not be read: {errors[0]}")
        return None
    view.add_adapters([str(path)])
    return str(path)


def sample_block() -> None:
    defaults = [str(p) for p in default_adapter_paths()]
    st.caption("The adapters `adapter-atlas serve` opens with: " + (", ".join(f"`{Path(p).name}`" for p in defaults)
                                                                   or "none found"))
    is_open = view.is_default_set()
    if st.button("Open the sample set", key="adapters_open_samples", disabled=not defaults or is_open,
                 help="It is the open set now." if is_open else "Replaces the open set with the sample set."):
        view.add_adapters(defaults, replace=True)


def _batch_id(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


def upload_block() -> None:
    st.caption("A PEFT directory (its files, a zip of it, or the folder itself), or a single weights file "
               "(.safetensors, .bin). Files are saved to a temporary folder on the server.")
    left, right = st.columns(2)
    files = left.file_uploader("Files or a zip", accept_multiple_files=True, key="adapters_upload_files",
                               type=["safetensors", "bin", "pt", "pth", "json", "zip"])
    folder = right.file_uploader("A folder", accept_multiple_files="directory", key="adapters_upload_dir")
    seen: set[str] = st.session_state.setdefault(SEEN_UPLOADS, set())
    for uploaded in (files, folder):
        if not uploaded:
            continue
        batch = [(f.name, f.getvalue()) for f in uploaded]
        batch_id = _batch_id(batch)
        if batch_id in seen:
            continue
        if open_upload(batch) is not None:
            seen.add(batch_id)
            st.success(f"Opened {len(batch)} uploaded file(s).")


def folder_block() -> None:
    roots = configured_roots()
    st.caption("Allowed roots (set `ADAPTER_ATLAS_ROOTS`, separated by `:`): "
               + (", ".join(f"`{r}`" for r in roots) or "none"))
    text = st.text_input("Server folder", key="adapters_folder", placeholder=str(roots[0]) if roots else "")
    if st.button("Open folder", key="adapters_open_folder"):
        try:
            found = resolve_server_folder(text, roots)
        except AtlasError as exc:
            st.error(f"Folder refused: {exc}")
            return
        view.add_adapters([str(p) for p in found])
        st.success(f"Found {len(found)} adapter(s) in {text}.")
