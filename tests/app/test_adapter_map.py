"""The adapter map figure: one point per adapter, group colours, neighbour hover, WebGL for thousands."""
from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist, squareform

from app.components.adapter_map import LEGEND_LIMIT, map_figure, neighbour_hover


def test_points_groups_and_hover() -> None:
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    names = ["a", "b", "c", "far_away"]
    D = squareform(pdist(coords))
    hover = neighbour_hover(names, D, k=2)
    assert hover[0].startswith("nearest: b") and "far_away" not in hover[0]
    assert hover[3].startswith("nearest: ")
    fig = map_figure(coords, names, [0, 0, 0, 1], hover=hover)
    traces = [t for t in fig.data if t.name != "selected"]
    assert [t.name for t in traces] == ["group 1", "group 2"]
    assert sum(len(t.x) for t in traces) == 4
    assert all(t.type == "scatter" for t in traces)  # SVG for a small set, no WebGL context
    assert traces[0].marker.color != traces[1].marker.color
    assert traces[1].customdata[0][0] == "far_away" and "nearest" in traces[1].customdata[0][2]


def test_thousands_of_points_one_trace_no_text() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, LEGEND_LIMIT + 5, n)
    fig = map_figure(rng.normal(size=(n, 2)), [f"adapter_{i}" for i in range(n)], labels)
    assert len(fig.data) == 1 and len(fig.data[0].x) == n and fig.data[0].mode == "markers"
    assert fig.data[0].type == "scattergl"
    assert fig.data[0].marker.showscale
