"""The adapter map: adapters as points in 2-D (from `analysis.embedding`), coloured by group.

Built for ten adapters and for ten thousand: WebGL markers (`Scattergl`) from 500 points, names written next to the
points only while they stay readable, one legend entry per group while there are few groups (a
continuous colour bar beyond that). Hover shows the name, the group and whatever the caller adds
(nearest neighbours with their distances, usually). Pages call `show_adapter_map`; tests and other
builders can call `map_figure`, which has no Streamlit in it.

    coords = embed_distances(D)                         # (N, 2)
    hover = neighbour_hover(names, D, k=3)              # "nearest: b (0.12), c (0.30), ..."
    show_adapter_map(coords, names, labels, hover=hover, key="overlap_map", name="adapter_map")
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from app.components.figures import FONT, GROUP_COLOURS, group_colour, short_label

TEXT_LIMIT = 40  # write names beside the points up to this many adapters
WEBGL_FROM = 500  # SVG markers below this many points (no WebGL context for a small set), WebGL from here
LEGEND_LIMIT = len(GROUP_COLOURS)  # one legend entry per group up to this many groups


def neighbour_hover(names: Sequence[str], D: np.ndarray, *, k: int = 3, unit: str = "d") -> list[str]:
    """One hover line per adapter: its k nearest others with their distances, nearest first."""
    from analysis.embedding import nearest_neighbours

    D = np.asarray(D, dtype=float)  # (N, N)
    nn = nearest_neighbours(D, k)  # (N, k)
    return ["nearest: " + ", ".join(f"{short_label(names[j], 32)} ({unit} {D[i, j]:.3f})" for j in row)
            if len(row) else "no other adapter" for i, row in enumerate(nn)]


def map_figure(coords: np.ndarray, names: Sequence[str], labels: Sequence[int] | None = None, *,
               hover: Sequence[str] | None = None, title: str = "Adapter map", label_title: str = "group",
               highlight: Sequence[int] = (), height: int = 520, show_text: bool | None = None) -> go.Figure:
    """Scatter of the map; `labels` colour the points (group numbers shown from 1), `highlight` rings points."""
    xy = np.asarray(coords, dtype=float).reshape(-1, 2)  # (N, 2)
    n = len(xy)
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} points")
    groups = np.zeros(n, dtype=int) if labels is None else np.asarray(labels, dtype=int)  # (N,)
    extra = list(hover) if hover is not None else [""] * n
    show_text = n <= TEXT_LIMIT if show_text is None else show_text
    text = [short_label(x, 22) for x in names]
    template = ("<b>%{customdata[0]}</b><br>" + (f"{label_title} %{{customdata[1]}}<br>" if labels is not None else "")
                + "%{customdata[2]}<extra></extra>")
    scatter = go.Scattergl if n >= WEBGL_FROM else go.Scatter
    fig = go.Figure()
    distinct = sorted(set(groups.tolist()))
    if labels is None or len(distinct) <= LEGEND_LIMIT:
        for g in distinct:
            idx = np.flatnonzero(groups == g)
            fig.add_trace(scatter(
                x=xy[idx, 0], y=xy[idx, 1], mode="markers+text" if show_text else "markers",
                name=f"{label_title} {g + 1}" if labels is not None else "adapters",
                text=[text[i] for i in idx], textposition="top center", textfont=dict(size=11),
                customdata=[(names[i], g + 1, extra[i]) for i in idx], hovertemplate=template,
                marker=dict(size=12 if n <= 200 else 6, color=group_colour(g), line=dict(width=1, color="white"))))
    else:  # too many groups for a legend: one trace, colour by group number
        fig.add_trace(scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name="adapters",
            customdata=[(names[i], int(groups[i]) + 1, extra[i]) for i in range(n)], hovertemplate=template,
            marker=dict(size=6, color=groups + 1, colorscale="Turbo", showscale=True,
                        colorbar=dict(title=dict(text=label_title, side="right")))))
    if len(highlight):
        idx = np.asarray(list(highlight), dtype=int)
        fig.add_trace(scatter(x=xy[idx, 0], y=xy[idx, 1], mode="markers", name="selected", hoverinfo="skip",
                                   marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(width=2, color="#c0392b"))))
    pad = _padding(xy)
    fig.update_layout(
        title=title, font=FONT, height=height, margin=dict(l=10, r=10, t=60, b=10),
        legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1.0, xanchor="right"),
        xaxis=dict(title="map axis 1", zeroline=False, showticklabels=False, range=pad[0]),
        yaxis=dict(title="map axis 2", zeroline=False, showticklabels=False, range=pad[1],
                   scaleanchor="x", scaleratio=1),
    )
    return fig


def _padding(xy: np.ndarray) -> tuple[list[float] | None, list[float] | None]:
    """Axis ranges with room for the names above the points (None lets plotly decide)."""
    if len(xy) == 0:
        return None, None
    lo, hi = xy.min(axis=0), xy.max(axis=0)  # (2,), (2,)
    span = np.maximum(hi - lo, max(float((hi - lo).max()), 1e-9) * 0.3)
    return ([float(lo[0] - 0.15 * span[0]), float(hi[0] + 0.15 * span[0])],
            [float(lo[1] - 0.12 * span[1]), float(hi[1] + 0.18 * span[1])])


def show_adapter_map(coords: np.ndarray, names: Sequence[str], labels: Sequence[int] | None = None, *,
                     hover: Sequence[str] | None = None, key: str, name: str = "adapter_map",
                     title: str = "Adapter map", label_title: str = "group", highlight: Sequence[int] = (),
                     on_select: str = "ignore", **meta: Any) -> Any:
    """Draw the map with the app's download row; its CSV holds x, y and the group of every adapter."""
    from app.components.display import show_figure

    xy = np.asarray(coords, dtype=float).reshape(-1, 2)  # (N, 2)
    groups = np.zeros(len(xy)) if labels is None else np.asarray(labels, dtype=float) + 1
    table = np.column_stack([xy, groups])  # (N, 3)
    fig = map_figure(xy, names, labels, hover=hover, title=title, label_title=label_title, highlight=highlight)
    return show_figure(fig, name=name, key=key, on_select=on_select,
                       matrix=(table, list(names), ["x", "y", label_title]), **meta)
