"""Start-up warm-up: the first visit to Overlap must not wait for the whole overlap table.

The first script run of the server process starts one background thread per adapter set (the
server's default set, then any set a session opens) that fills the caches of `app.cache` with what
Overlap, Clusters and the adapter map show first. The caches are keyed by each adapter's content
sha256, so the work is done once per content, whichever session asks first. A failed warm-up only
means the pages compute on demand, with their progress bar.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import streamlit as st

from app import cache

THREAD_NAME = "atlas-warm-up"
log = logging.getLogger("adapter_atlas.warm_up")


@st.cache_resource(show_spinner=False)
def _started() -> dict[tuple[str, ...], threading.Thread]:
    """Threads by adapter set, shared by every session of the process."""
    # The thread has no session: Streamlit's "missing ScriptRunContext" notes are noise there.
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
        lambda record: threading.current_thread().name != THREAD_NAME)
    return {}


def warm_up(paths: list[str], metric: str = "subspace_similarity") -> Any:
    """Start (once per process and set) the background computation of the set's overlap views."""
    started, key = _started(), tuple(paths)
    if key not in started and len(paths) >= 2:
        thread = threading.Thread(target=_warm, args=(list(paths), metric), daemon=True, name=THREAD_NAME)
        started[key] = thread
        thread.start()
    return started.get(key)


def _warm(paths: list[str], metric: str) -> None:
    from analysis.errors import AtlasError
    from app.components.metrics import DISTANCE_OF_METRIC

    try:
        refs, _, _ = cache.load_set(paths)
        refs_t = tuple(refs)
        if len(refs_t) < 2:
            return
        cache.overlap_table(refs_t)
        cache.layers_and_types(refs_t)
        cache.aggregated(refs_t, metric, None, None)
        cache.dendrogram_order(refs_t, metric)
        cache.adapter_map(refs_t, DISTANCE_OF_METRIC.get(metric, "cosine"))
        log.info("warm-up done: %d adapters, %d modules", len(refs_t), len(cache.overlap_table(refs_t)))
    except AtlasError as exc:  # e.g. adapters of different bases: the page says so itself
        log.info("warm-up skipped: %s", exc)
    except Exception:  # noqa: BLE001 - never let a background thread take the server down
        log.warning("warm-up failed; pages will compute on demand", exc_info=True)
