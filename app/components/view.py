"""The current view, mirrored in the URL so that a copied link reopens the same page, controls and selection.

Session state holds only UI choices, under `atlas_` keys shared by the pages and `<page>_` keys of
one page; the adapters themselves live in `app.cache`. Any control joins the URL with one call:

    view.choose("Layer", options, "overlap_layer", param="layer", widget=st.select_slider)
    view.url_state("clusters_k", "k", default=3, kind=int)   # before the widget with key="clusters_k"

The link that opened a session is read once (`init_session`); each bound control takes its value
from it the first time the page holding it runs, and writes its value back at the end of every run.
A value from a link that does not fit (an adapter outside the allowed roots, a module the set lacks)
is named on the page in one warning box (`show_refused`), never silently replaced. Adapters travel
short: relative to the configured root holding them, or `#` + a content-hash prefix, and not at all
while the open set is the server's default set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

from analysis.errors import AtlasError
from app import cache
from app.components.figures import short_label
from app.components.metrics import METRICS
from app.components.sources import allowed_paths, configured_roots, default_adapter_paths

ADAPTERS = "atlas_adapters"  # list[str]: the open set (server paths), in the user's order
KNOWN = "atlas_known"  # list[str]: every adapter offered in the picker (defaults, uploads, folders)
METRIC = "atlas_metric"  # widget key shared by the overlap and cluster pages
MODULE = "atlas_module"  # widget key shared by the adapter, overlap and subspace pages
PAGE = "atlas_page"
PAIR = "atlas_pair"  # (name_i, name_j): the pair last looked at, handed from Overlap to Subspaces
AUTHOR = "atlas_author"  # str: the name this session last signed with (Review forms, Merge proposals)
REFUSED = "atlas_refused"  # list[str]: link entries that could not be honoured, shown on the page
_URL_READ = "atlas_url_read"
_FROM_URL = "atlas_from_url"  # {param: [raw values]} of the link that opened the session, consumed on use
_BOUND = "atlas_bound"  # {param: (key, encoder)} bound during the current run
_KNOWN_PARAMS = "atlas_known_params"  # every param any page bound this session (to prune stale ones)
_KEEP = "atlas_keep_keys"  # widget keys to keep alive while their page is not shown
WIDGET_KEYS = (ADAPTERS, METRIC, MODULE)
GLOBAL_PARAMS = ("adapter", "metric", "module")


# --- adapters in the URL ---------------------------------------------------------------------------

def adapter_token(path: str | Path, roots: Sequence[Path] | None = None) -> str:
    """The short URL name of an adapter: its path under the first configured root, else '#' + sha prefix."""
    p = Path(path).resolve()
    for root in configured_roots() if roots is None else roots:
        if p == root or root in p.parents:
            rel = p.relative_to(root).as_posix() or "."
            if resolve_token(rel, roots) == p:  # an earlier root must not claim the same relative name
                return rel
    try:
        return "#" + cache.content_sha(p)[:12]
    except OSError:
        return str(p)


def resolve_token(token: str, roots: Sequence[Path] | None = None, known: Sequence[str] = ()) -> Path | None:
    """The server path a URL token names, or None when it names nothing this server may open."""
    token = token.strip()
    if not token:
        return None
    if token.startswith("#"):  # content-hash prefix: only adapters this session or server already offers
        candidates = [str(p) for p in default_adapter_paths()] + list(known)
        for text in dict.fromkeys(candidates):
            try:
                if cache.content_sha(Path(text)).startswith(token[1:].lower()):
                    return Path(text).resolve()
            except OSError:
                continue
        return None
    if Path(token).is_absolute():  # links written before adapters were named relative to the roots
        kept = allowed_paths([token])
        return kept[0] if kept else None
    for root in configured_roots() if roots is None else roots:
        kept = allowed_paths([str(root / token)], list(roots) if roots is not None else None)
        if kept:
            return kept[0]
    return None


def adapter_label(path: str) -> str:
    """How an adapter is named on screen (chips, pickers): its short URL name, or its folder name for an upload."""
    token = adapter_token(path)
    return Path(path).name if token.startswith("#") else token


def _adapters_from_url(tokens: list[str]) -> list[str]:
    paths: list[str] = []
    for token in tokens:
        found = resolve_token(token)
        if found is None:
            refuse("adapter", token, "not found under the allowed roots of this server "
                                     "(an upload only lives as long as the session that uploaded it)")
        else:
            paths.append(str(found))
    return list(dict.fromkeys(paths))


def is_default_set() -> bool:
    """Whether the open set is exactly the server's default set (nobody chose it yet)."""
    return list(st.session_state.get(ADAPTERS, [])) == [str(p) for p in default_adapter_paths()]


def _adapters_param() -> list[str]:
    """Tokens for the open set; none while it is exactly the server's default set."""
    current = list(st.session_state.get(ADAPTERS, []))
    defaults = [str(p) for p in default_adapter_paths()]
    return [] if current == defaults else [adapter_token(p) for p in current]


# --- session start and the generic binding ---------------------------------------------------------

def init_session() -> None:
    """Every run: keep bound widget values alive; first run: read the link that opened the session."""
    for key in (*WIDGET_KEYS, *st.session_state.get(_KEEP, ())):  # Streamlit drops unrendered widget values
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    st.session_state[_BOUND] = {}
    st.session_state.pop(_SLOT, None)
    if str(st.session_state.get("merge_prop_author") or "").strip():  # the Merge page's name, before
        st.session_state[AUTHOR] = st.session_state["merge_prop_author"].strip()  # Streamlit drops it
    if st.session_state.get(_URL_READ):
        return
    st.session_state[_URL_READ] = True
    params = st.query_params
    st.session_state[_FROM_URL] = {k: params.get_all(k) for k in params}
    st.session_state.setdefault(REFUSED, [])
    defaults = [str(p) for p in default_adapter_paths()]
    tokens = params.get_all("adapter")
    from_url = _adapters_from_url(tokens) if tokens else []
    if tokens and not from_url:
        refuse("adapter", "…", "no adapter of the link could be opened, so the default set is open instead")
    st.session_state.setdefault(ADAPTERS, from_url or defaults)
    st.session_state.setdefault(KNOWN, list(dict.fromkeys(defaults + from_url)))
    if params.get("metric") in METRICS:
        st.session_state.setdefault(METRIC, params["metric"])
    elif params.get("metric"):
        refuse("metric", params["metric"], "not a metric of this app")
        st.session_state[_FROM_URL].pop("metric", None)  # named once, not again by the Metric control
    if params.get("page"):
        st.session_state.setdefault(PAGE, params["page"])
    st.session_state.setdefault(METRIC, "subspace_similarity")


def refuse(param: str, value: str, reason: str) -> None:
    """Remember one link entry that could not be honoured; `show_refused` names it on the page."""
    line = f"`{param}={short_label(str(value), 60)}`: {reason}"
    refused = st.session_state.setdefault(REFUSED, [])
    if line not in refused:
        refused.append(line)


_SLOT = "atlas_refused_slot"  # the placeholder the warning is drawn into during this run


def show_refused(*, final: bool = False) -> None:
    """One warning box listing every link entry this session could not honour.

    Pages call it near the top (adapter refusals are known by then); `streamlit_app` calls it again with
    `final=True` after the page ran, which redraws the same box with the entries its controls refused
    and a dismiss button.
    """
    slot = st.session_state.get(_SLOT)
    if not final or slot is None:
        slot = st.empty()
        st.session_state[_SLOT] = slot
    refused = st.session_state.get(REFUSED) or []
    if not refused:
        return
    with slot.container():
        st.warning("Some parts of the link that opened this view could not be used:\n\n"
                   + "\n".join(f"- {line}" for line in refused), icon=":material/link_off:")
        if final and st.button("Dismiss", key="atlas_refused_dismiss", type="tertiary"):
            st.session_state[REFUSED] = []
            st.rerun()


def from_url(param: str) -> list[str] | None:
    """The raw values the opening link gave `param`, handed out once (None when it gave none)."""
    return st.session_state.setdefault(_FROM_URL, {}).pop(param, None)


def linked(param: str) -> bool:
    """Whether the opening link still holds an unused value for `param` (a peek: nothing is consumed)."""
    return bool(st.session_state.get(_FROM_URL, {}).get(param))


def _bind(key: str, param: str, encode: Callable[[Any], str | list[str] | None]) -> None:
    st.session_state.setdefault(_BOUND, {})[param] = (key, encode)
    known = st.session_state.setdefault(_KNOWN_PARAMS, set())
    known.add(param)
    keep = st.session_state.setdefault(_KEEP, set())
    keep.add(key)


def url_state(key: str, param: str, default: Any = None, *, kind: Callable[[str], Any] = str,
              encode: Callable[[Any], str] = str) -> None:
    """Bind `st.session_state[key]` (a widget's key) to `?param=`. Call it before creating the widget.

    `kind` parses the link's text (int, float, str, `bool_param`); a value it rejects is named by
    `show_refused`. `default` is used when neither the link nor the session has a value.
    """
    raw = from_url(param)
    if raw:
        try:
            st.session_state[key] = kind(raw[0])
        except (TypeError, ValueError):
            refuse(param, raw[0], f"not a valid value (expected {getattr(kind, '__name__', 'a value')})")
    if default is not None:
        st.session_state.setdefault(key, default)
    _bind(key, param, lambda v: None if v is None else encode(v))


def bool_param(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def keep_param(param: str, value: str | None) -> None:
    """A URL entry a page manages itself (e.g. Review's `proposal`): written as given, None removes it."""
    st.session_state.setdefault(_BOUND, {})[param] = (None, lambda _: value)
    st.session_state.setdefault(_KNOWN_PARAMS, set()).add(param)


def author() -> str:
    """The name this session signed with last: the Review forms' or the Merge page's proposal author."""
    return str(st.session_state.get(AUTHOR) or st.session_state.get("merge_prop_author") or "")


def requested_page() -> str | None:
    """The page named by `?page=` at session start, handed out once."""
    return st.session_state.pop(PAGE, None)


def write_url(page: str | None = None, *, prune: bool = True) -> None:
    """Mirror the view into the query string: the shared choices plus the controls bound during this run.

    The path names the page, so `page` is not written (a `?page=` link still opens its page once); the
    open set is written on every page, any other control only on the pages that show it.
    With `prune`, entries bound on other pages earlier in the session are removed; entries no page
    ever bound (someone else's) are left alone. Only changed keys are rewritten.
    """
    wanted: dict[str, list[str]] = {"adapter": _adapters_param()}
    for param, (key, encode) in st.session_state.get(_BOUND, {}).items():
        value = encode(st.session_state.get(key) if key else None)
        if value is not None and value != []:
            wanted[param] = [str(x) for x in value] if isinstance(value, (list, tuple)) else [str(value)]
    stale = set(st.session_state.get(_KNOWN_PARAMS, ())) | set(GLOBAL_PARAMS) | {"page"}
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    for k in current:
        if k not in wanted and (prune or k == "page") and k in stale:
            del st.query_params[k]
    for k, v in wanted.items():
        if current.get(k) != v:
            if v:
                st.query_params[k] = v
            elif k in current:
                del st.query_params[k]


def module_token(module: str) -> str:
    """`model.layers.29.self_attn.o_proj` travels as `29.self_attn.o_proj`."""
    from analysis.overlap import parse_module_name

    layer, kind = parse_module_name(str(module))
    return f"{layer}.{kind}" if layer != "" else str(module)


# --- the open set --------------------------------------------------------------------------------

def add_adapters(paths: list[str], *, replace: bool = False) -> None:
    known = st.session_state.setdefault(KNOWN, [])
    st.session_state[KNOWN] = list(dict.fromkeys(known + paths))
    current = [] if replace else list(st.session_state.get(ADAPTERS, []))
    st.session_state[ADAPTERS] = list(dict.fromkeys(current + paths))


def adapter_set(*, minimum: int = 1) -> tuple[tuple[cache.AdapterRef, ...], list]:
    """Load the open set, show one error box per adapter that failed, stop the page if too few remain."""
    show_refused()
    refs, adapters, errors = cache.load_set(list(st.session_state.get(ADAPTERS, [])))
    for message in errors:
        st.error(message)
    if len(refs) < minimum:
        st.info(f"This page needs at least {minimum} adapter(s) that load: choose them on the Adapters page.")
        st.page_link("app_pages/adapters.py", label="Go to Adapters", icon=":material/folder_open:")
        st.stop()
    return tuple(refs), adapters


def choose(label: str, options: list, key: str, *, widget=st.selectbox, param: str | None = None,
           short: Callable[[Any], str] = str, **kwargs) -> object:
    """A selectbox (or `widget`) bound to a key whose stored value may not fit the current options.

    With `param`, the choice also lives in the URL as `short(option)`; a linked value that matches no
    option is named by `show_refused` and the first option is shown instead.
    """
    if not options:
        return None
    if key == MODULE:  # the shared controls travel under fixed names on every page that shows them
        param, short = "module", module_token
    elif key == METRIC:
        param = "metric"
    raw = from_url(param) if param else None
    if raw:
        match = [o for o in options if raw[0] in (short(o), str(o))]
        if match:
            st.session_state[key] = match[0]
        else:
            refuse(param, raw[0], f"no such {label.lower()} here, showing {short_label(str(short(options[0])), 40)}")
    if param:
        _bind(key, param, lambda v: None if v is None else short(v))
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return widget(label, options, key=key, **kwargs)


def choose_many(label: str, options: list, key: str, *, param: str, default: list | None = None,
                short: Callable[[Any], str] = str, **kwargs) -> list:
    """A multiselect whose choice lives in the URL (one entry per chosen option)."""
    raw = from_url(param)
    if raw is not None:
        by_short = {short(o): o for o in options} | {str(o): o for o in options}
        st.session_state[key] = [by_short[r] for r in raw if r in by_short]
        for r in raw:
            if r not in by_short:
                refuse(param, r, f"no such {label.lower()} here")
    st.session_state.setdefault(key, list(default or []))
    st.session_state[key] = [o for o in st.session_state[key] if o in options]
    _bind(key, param, lambda v: [short(o) for o in v or []])
    return st.multiselect(label, options, key=key, **kwargs)


def overlap_table(refs: tuple[cache.AdapterRef, ...]) -> dict:
    """The overlap table of the open set, with a progress bar while modules are computed.

    Adapters that share no module (different bases) get one error box and the page stops. Once the
    start-up warm-up (`cache.warm_up`) has run, this is a cache hit and no bar is drawn.
    """
    if cache.overlap_ready(refs):
        table = cache.overlap_table(refs)
    else:
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
