"""The Streamlit side of upload areas: which area belongs to this session, and a janitor that removes the
areas of sessions that are gone.

`app.components.uploads` has no Streamlit in it; this module gives it the session id and asks the
Streamlit runtime which sessions are still alive. An area normally goes when its session's state is
garbage-collected (a finalizer); the janitor does not wait for the garbage collector: every few seconds it
touches the areas of live sessions and removes those whose session has been gone for the TTL.
"""
from __future__ import annotations

import logging
import threading
import time

import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app.components.uploads import UPLOAD_BASE, UploadArea, UploadLimits, session_area, sweep

log = logging.getLogger(__name__)

_janitor: threading.Thread | None = None
_lock = threading.Lock()


def session_alive(session_id: str) -> bool:
    """True while the Streamlit session is connected (a closed tab's session stops being active)."""
    return runtime.exists() and runtime.get_instance().is_active_session(session_id)


def _janitor_loop(ttl_s: float) -> None:
    period = max(1.0, min(30.0, ttl_s / 2))
    while True:
        time.sleep(period)
        try:
            sweep(UPLOAD_BASE, ttl_s=ttl_s, alive=session_alive)
        except Exception:  # noqa: BLE001 - the janitor must outlive one bad pass
            log.exception("upload janitor pass failed")


def current_area() -> UploadArea:
    """This session's upload area (created on first use); starts the janitor once per server process."""
    global _janitor
    ctx = get_script_run_ctx()
    area = session_area(st.session_state, session_id=ctx.session_id if ctx else "")
    with _lock:
        if _janitor is None and runtime.exists():
            _janitor = threading.Thread(target=_janitor_loop, args=(UploadLimits.from_env().ttl_s,),
                                        name="atlas-upload-janitor", daemon=True)
            _janitor.start()
    return area
