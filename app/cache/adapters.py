"""`app.cache` section: adapters (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from analysis.adapters.model import Adapter
from analysis.errors import AtlasError
from analysis.progress import Progress as ProgressFn

AdapterRef = tuple[str, str, str]  # (path, Adapter.sha256, display name)
Progress = ProgressFn | None  # the library's one progress type (analysis.progress), or none

# --- adapters ------------------------------------------------------------------------------------
# An adapter is named and hashed by `analysis.workflow.AdapterSet`: the display name is the shortest
# path suffix that tells equal folder names apart, the hash is `Adapter.sha256` (what recipes record).
# The parsed adapter is cached per path and file state (name, size, mtime), so an edit reloads it.

def _file_state(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@st.cache_resource(show_spinner="Loading adapter…", max_entries=128)
def _parsed(path: str, state: tuple[tuple[str, int, int], ...]) -> Adapter:
    """The parsed adapter as the loader names it; `state` is in the key so edits reload."""
    from analysis.adapters import load_adapter as _load

    return _load(Path(path))


def content_sha(path: Path) -> str:
    """`Adapter.sha256` of the adapter at `path`; a path that does not load as an adapter gets the hash
    of its files (so it can still be named in a link), raises OSError when unreadable."""
    state = _file_state(Path(path))
    try:
        return _parsed(str(path), state).sha256
    except AtlasError:
        return _files_sha(str(path), state)


@st.cache_data(show_spinner=False, max_entries=256)
def _files_sha(path: str, state: tuple[tuple[str, int, int], ...]) -> str:
    from analysis.adapters.model import sha256_of_files

    p = Path(path)
    return sha256_of_files([p] if p.is_file() else [p / name for name, _, _ in state])


def load_adapter(path: str, sha256: str, name: str) -> Adapter:
    """The parsed adapter under its display name, shared read-only by all sessions (a renamed copy that
    shares the tensors, never the cached object changed in place)."""
    import dataclasses

    adapter = _parsed(path, _file_state(Path(path)))
    return adapter if adapter.name == name else dataclasses.replace(adapter, name=name, _sha256=adapter.sha256)


def load_set(paths: list[str]) -> tuple[list[AdapterRef], list[Adapter], list[str]]:
    """Load every path; failures become one-line messages instead of stopping the page."""
    from analysis.workflow import display_names

    refs: list[AdapterRef] = []
    adapters: list[Adapter] = []
    errors: list[str] = []
    for text, name in zip(paths, display_names(paths)):
        path = Path(text)
        try:
            sha = content_sha(path)
            adapter = load_adapter(str(path), sha, name)
        except (AtlasError, OSError) as exc:
            errors.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        refs.append((str(path), sha, name))
        adapters.append(adapter)
    return refs, adapters, errors


def model_order(modules: list[str] | Any) -> list[str]:
    """Module names as the model runs them (layer 2 before layer 10), for pickers and tables."""
    from analysis.workflow import AdapterSet

    return AdapterSet.model_order(list(modules))


def adapters_of(refs: tuple[AdapterRef, ...]) -> list[Adapter]:
    return [load_adapter(*ref) for ref in refs]


def adapter_set(refs: tuple[AdapterRef, ...]) -> Any:
    """The refs as an `analysis.workflow.AdapterSet` (input order, display names from the refs)."""
    from analysis.workflow import AdapterSet

    return AdapterSet(tuple(adapters_of(refs)))


@st.cache_data(show_spinner=False)
def describe(ref: AdapterRef) -> dict[str, Any]:
    from analysis.adapters.describe import describe_adapter

    return describe_adapter(load_adapter(*ref))


@st.cache_data(show_spinner=False, max_entries=256)
def singular_values(ref: AdapterRef, module: str) -> np.ndarray:
    from analysis.linalg import delta_svd

    _, s, _ = delta_svd(load_adapter(*ref).modules[module])
    return s.numpy()  # (k,)
