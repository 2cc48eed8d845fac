"""Adapter Atlas in the browser: page config, the page list, and the URL <-> view mirror."""
from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR.parent) not in sys.path:  # `streamlit run app/streamlit_app.py` puts only app/ on the path
    sys.path.insert(0, str(APP_DIR.parent))

import streamlit as st  # noqa: E402

from app.components import view  # noqa: E402

# (file, title, icon, url path), in the order of the sidebar.
PAGES = [
    ("adapters.py", "Adapters", ":material/folder_open:", "adapters"),
    ("overlap.py", "Overlap", ":material/grid_on:", "overlap"),
    ("subspaces.py", "Subspaces", ":material/architecture:", "subspaces"),
    ("clusters.py", "Clusters", ":material/account_tree:", "clusters"),
    ("capacity.py", "Capacity", ":material/stacked_bar_chart:", "capacity"),
    ("merge.py", "Merge", ":material/merge:", "merge"),
    ("review.py", "Review", ":material/rate_review:", "review"),
]

st.set_page_config(page_title="Adapter Atlas", page_icon=":material/hub:", layout="wide")
view.init_session()

pages = {
    url: st.Page(f"app_pages/{file}", title=title, icon=icon, url_path=url, default=(url == "adapters"))
    for file, title, icon, url in PAGES
}
navigation = st.navigation(list(pages.values()))
wanted = view.requested_page()
if wanted in pages and pages[wanted] is not navigation and wanted != navigation.url_path:
    st.switch_page(pages[wanted])
current = navigation.url_path or "adapters"
view.write_url(current)
navigation.run()
view.write_url(current)  # choices made while the page ran
