"""Showing figures and matrices the same way on every page: chart + PNG toolbar + HTML/CSV/JSON downloads."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def matrix_csv(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> str:
    """Standard CSV: a header of column labels after an empty corner cell, then one labelled row each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([""] + [str(c) for c in cols])
    for r, values in zip(rows, np.asarray(matrix, dtype=float)):
        writer.writerow([str(r)] + [repr(float(v)) for v in values])
    return out.getvalue()


def matrix_json(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], **meta: Any) -> str:
    m = np.asarray(matrix, dtype=float)
    values = [[None if not np.isfinite(v) else float(v) for v in row] for row in m]
    return json.dumps({**meta, "rows": list(map(str, rows)), "cols": list(map(str, cols)), "values": values},
                      indent=1)


def show_figure(fig: go.Figure, *, name: str, key: str, on_select: str = "ignore",
                selection_mode: str | tuple[str, ...] = "points",
                matrix: tuple[np.ndarray, Sequence[str], Sequence[str]] | None = None, **meta: Any) -> Any:
    """Plot, then one row of downloads: the figure as HTML and, when given, its matrix as CSV and JSON.

    The toolbar's camera button saves a PNG named after the view.
    """
    config = {"displaylogo": False,
              "toImageButtonOptions": {"format": "png", "filename": _slug(name), "scale": 2}}
    if on_select == "ignore":
        event = st.plotly_chart(fig, key=key, config=config, width="stretch")
    else:
        event = st.plotly_chart(fig, key=key, config=config, width="stretch", on_select=on_select,
                                selection_mode=selection_mode)
    with st.container(horizontal=True):
        # Built only on click (a callable) and self-contained, so the saved file opens offline.
        st.download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True, full_html=True),
                           file_name=f"{_slug(name)}.html", mime="text/html", key=f"{key}_html",
                           on_click="ignore", icon=":material/download:")
        if matrix is not None:
            _matrix_buttons(*matrix, name=name, key=key, **meta)
    return event


def _matrix_buttons(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, name: str, key: str,
                    **meta: Any) -> None:
    st.download_button("Matrix (CSV)", matrix_csv(matrix, rows, cols), file_name=f"{_slug(name)}.csv",
                       mime="text/csv", key=f"{key}_csv", on_click="ignore", icon=":material/table:")
    st.download_button("Matrix (JSON)", matrix_json(matrix, rows, cols, name=name, **meta),
                       file_name=f"{_slug(name)}.json", mime="application/json", key=f"{key}_json",
                       on_click="ignore", icon=":material/data_object:")
