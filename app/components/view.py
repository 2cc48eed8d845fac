"""The current view: which adapters are open, which module and metric, mirrored in the URL.

Session state holds only these UI choices (plain strings), under `atlas_` keys shared by the
pages; the adapters themselves live in `app.cache`. The URL carries the same choices
(`?page=overlap&adapter=/path/a&adapter=/path/b&module=...&metric=...`) so a view can be shared;
it is read once when a session starts and rewritten on every run.
"""
from __future__ import annotations

import streamlit as st

from analysis.errors import AtlasError
from app import cache
from app.components.figures import short_label
from app.components.metrics import METRICS
from app.components.sources import allowed_paths, default_adapter_paths

ADAPTERS = "atlas_adapters"  # list[str]: the open set, in the user's order
KNOWN = "atlas_known"  # list[str]: every adapter offered in the picker (defaults, uploads, folders)
METRIC = "atlas_metric"  # widget key shared by the overlap and cluster pages
MODULE = "atlas_module"  # widget key shared by the adapter, overlap and subspace pages
PAGE = "atlas_page"
PAIR = "atlas_pair"  # (name_i, name_j): the pair last looked at, handed from Overlap to Subspaces
_URL_READ = "atlas_url_read"
WIDGET_KEYS = (ADAPTERS, METRIC, MODULE)


def init_session() -> None:
    """First run of a session: take the view from the URL when it names one, else the defaults."""
    for key in WIDGET_KEYS:  # keep shared widget values alive across pages (Streamlit drops unrendered ones)
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    if st.session_state.get(_URL_READ):
        return
    st.session_state[_URL_READ] = True
    params = st.query_params
    from_url = [str(p) for p in allowed_paths(params.get_all("adapter"))]
    defaults = [str(p) for p in default_adapter_paths()]
    st.session_state.setdefault(ADAPTERS, from_url or defaults)
    st.session_state.setdefault(KNOWN, list(dict.fromkeys(defaults + from_url)))
    if params.get("metric") in METRICS:
        st.session_state.setdefault(METRIC, params["metric"])
    if params.get("module"):
        st.session_state.setdefault(MODULE, params["module"])
    if params.get("page"):
        st.session_state.setdefault(PAGE, params["page"])
    st.session_state.setdefault(METRIC, "subspace_similarity")


def requested_page() -> str | None:
    """The page named by the URL at session start, handed out once."""
    return st.session_state.pop(PAGE, None)


def write_url(page: str) -> None:
    """Mirror the current view into the query string (only keys that changed are rewritten)."""
    wanted: dict[str, str | list[str]] = {"page": page, "adapter": list(st.session_state.get(ADAPTERS, []))}
    for param, key in (("metric", METRIC), ("module", MODULE)):
        if st.session_state.get(key):
            wanted[param] = str(st.session_state[key])
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    for k, v in wanted.items():
        as_list = v if isinstance(v, list) else [v]
        if current.get(k) != as_list:
            st.query_params[k] = v


def add_adapters(paths: list[str], *, replace: bool = False) -> None:
    known = st.session_state.setdefault(KNOWN, [])
    st.session_state[KNOWN] = list(dict.fromkeys(known + paths))
    current = [] if replace else list(st.session_state.get(ADAPTERS, []))
    st.session_state[ADAPTERS] = list(dict.fromkeys(current + paths))


def adapter_set(*, minimum: int = 1) -> tuple[tuple[cache.AdapterRef, ...], list]:
    """Load the open set, show one error box per adapter that failed, stop the page if too few remain."""
    refs, adapters, errors = cache.load_set(list(st.session_state.get(ADAPTERS, [])))
    for message in errors:
        st.error(message)
    if len(refs) < minimum:
        st.info(f"This page needs at least {minimum} adapter(s) that load: choose them on the Adapters page.")
        st.page_link("app_pages/adapters.py", label="Go to Adapters", icon=":material/folder_open:")
        st.stop()
    return tuple(refs), adapters


def choose(label: str, options: list, key: str, *, widget=st.selectbox, **kwargs) -> object:
    """A selectbox (or `widget`) bound to a key whose stored value may not fit the current options."""
    if not options:
        return None
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return widget(label, options, key=key, **kwargs)

def overlap_table(refs: tuple[cache.AdapterRef, ...]) -> dict:
    """The overlap table of the open set, with a progress bar while modules are computed.

    Adapters that share no module (different bases) get one error box and the page stops.
    """
    bar = st.progress(0.0, text="Comparing adapters module by module…")

    def step(done: int, total: int, module: str) -> None:
        bar.progress(done / max(total, 1), text=f"Overlap {done}/{total}: {module}")

    try:
        table = cache.overlap_table(refs, None, step)
    except AtlasError as exc:
        bar.empty()
        st.error(f"These adapters cannot be compared: {exc}")
        st.stop()
    bar.empty()
    if not table:
        st.error("These adapters share no module with the same name and shape: nothing to compare.")
        st.stop()
    return table


def clicked_pair(event: object, names: list[str], order: list[int]) -> tuple[int, int] | None:
    """(i, j) in set order for the heatmap cell the user clicked, or None (no click, or the diagonal)."""
    try:
        points = event.selection["points"]  # type: ignore[attr-defined]
    except (AttributeError, KeyError, TypeError):
        return None
    if not points:
        return None
    by_label = {short_label(n): k for k, n in enumerate(names)}
    row, col = by_label.get(str(points[0].get("y"))), by_label.get(str(points[0].get("x")))
    if row is None or col is None or row == col:
        return None
    return order[row], order[col]
