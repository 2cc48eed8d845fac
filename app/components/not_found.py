"""The page for a URL path no page has (`/nosuchpage`): say so and link every page, never show another silently.

Streamlit runs the default page (our hidden forwarding root) for an unknown path; the root tells the two apart
by the path of the browser's URL (`st.context.url`, below the server's `server.baseUrlPath`).
"""
from __future__ import annotations

from typing import Iterable
from urllib.parse import unquote, urlparse

import streamlit as st


def unknown_page(url: str | None, base_path: str, known: Iterable[str]) -> str | None:
    """The path the browser asked for when it names no page (None for the root, a known page, or no URL)."""
    if not url:
        return None
    path = unquote(urlparse(url).path).strip("/")
    base = base_path.strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].strip("/")
    if not path or path in set(known):
        return None
    return path


def show_not_found(path: str, pages: Iterable[st.Page]) -> None:
    """A clear "no such page" with a link to every page; nothing else runs."""
    st.title("No such page")
    shown = "".join(ch if ch.isprintable() else "?" for ch in path[:200])
    st.error(f"There is no page at `/{shown}`. Choose one of these:")
    for page in pages:
        st.page_link(page, label=page.title, icon=page.icon)
