"""Adapter Atlas in the browser: page config, the page list, and the URL <-> view mirror.

Every page has its own path (`/adapters`, `/overlap`, ...). The root `/` is a hidden page that only
forwards: to the page a `?page=` link names (older links), else to Adapters, keeping every other
query entry (`/?page=review&proposal=1` opens proposal 1 on `/review`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR.parent) not in sys.path:  # `streamlit run app/streamlit_app.py` puts only app/ on the path
    sys.path.insert(0, str(APP_DIR.parent))

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from app.components import view, warm_up  # noqa: E402
from app.components.not_found import show_not_found, unknown_page  # noqa: E402

# (file, title, icon, url path), in the order of the sidebar.
PAGES = [
    ("adapters.py", "Adapters", ":material/folder_open:", "adapters"),
    ("overlap.py", "Overlap", ":material/grid_on:", "overlap"),
    ("subspaces.py", "Subspaces", ":material/architecture:", "subspaces"),
    ("clusters.py", "Clusters", ":material/account_tree:", "clusters"),
    ("capacity.py", "Capacity", ":material/stacked_bar_chart:", "capacity"),
    ("merge.py", "Merge", ":material/merge:", "merge"),
    ("review.py", "Review", ":material/rate_review:", "review"),
    ("population.py", "Population", ":material/scatter_plot:", "population"),
]


@st.cache_resource(show_spinner=False)
def favicon() -> Any:
    """A 32 px hub (three linked dots) drawn here, so the browser fetches no icon from outside."""
    size, img = 32, np.full((32, 32, 4), 0, dtype=np.uint8)  # (H, W, RGBA) transparent
    yy, xx = np.mgrid[0:size, 0:size]  # (H, W) each
    dots = [(9, 9), (23, 11), (14, 24)]
    for (y0, x0), (y1, x1) in zip(dots, dots[1:] + dots[:1]):
        t = np.clip(((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / ((y1 - y0) ** 2 + (x1 - x0) ** 2), 0, 1)
        near = (yy - y0 - t * (y1 - y0)) ** 2 + (xx - x0 - t * (x1 - x0)) ** 2 <= 2.0
        img[near] = (31, 95, 139, 255)
    for k, (y, x) in enumerate(dots):
        img[(yy - y) ** 2 + (xx - x) ** 2 <= 20] = [(0, 114, 178, 255), (230, 159, 0, 255), (0, 158, 115, 255)][k]
    from PIL import Image

    return Image.fromarray(img, "RGBA")  # st.set_page_config takes an image, not a bare array


st.set_page_config(page_title="Adapter Atlas", page_icon=favicon(), layout="wide")
view.init_session()
warm_up.warm_up([str(p) for p in view.default_adapter_paths()])  # once per process: Overlap's first chart

pages = {
    url: st.Page(f"app_pages/{file}", title=title, icon=icon, url_path=url)
    for file, title, icon, url in PAGES
}


def forward() -> None:
    """The root: open the page a `?page=` link names (else Adapters) with the rest of the link; an unknown
    path (`/nosuchpage`, which Streamlit hands to this default page) gets a "no such page" with links instead."""
    missing = unknown_page(st.context.url, st.get_option("server.baseUrlPath") or "", [*pages, "home"])
    if missing is not None:
        show_not_found(missing, pages.values())
        return
    wanted = view.requested_page()
    target = pages.get(wanted or "adapters", pages["adapters"])
    if wanted and wanted not in pages:
        view.refuse("page", wanted, "no such page, Adapters is shown instead")
    rest = {k: st.query_params.get_all(k) for k in st.query_params if k != "page"}
    st.switch_page(target, query_params=rest)


home = st.Page(forward, title="Adapter Atlas", url_path="home", default=True, visibility="hidden")
navigation = st.navigation([home, *pages.values()])
current = navigation.url_path
if navigation is not home:
    view.requested_page()  # a `?page=` entry only matters on the root
    view.write_url(current, prune=False)
    if len(st.session_state.get(view.ADAPTERS, [])) >= 2:
        warm_up.warm_up(list(st.session_state[view.ADAPTERS]))
navigation.run()
view.show_refused(final=True)  # with what the page's controls refused from the link
view.write_url(current)  # choices made while the page ran
