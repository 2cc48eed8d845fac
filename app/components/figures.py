"""Plotly figures shared by the pages. No Streamlit here: each builder takes arrays, returns a Figure.

Hover text always names both adapters (or both axes) and the value with its metric, because a
colour alone cannot be quoted in a review comment.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from app.components.metrics import MetricSpec

FONT = dict(size=13)


def short_label(label: str, limit: int = 28) -> str:
    """Keep both ends of a long name (task prefix and variant suffix), drop the middle."""
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[-(limit - 1 - head):]


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], spec: MetricSpec, *,
            title: str, row_title: str = "adapter", col_title: str = "adapter",
            annotate: bool | None = None, clickable: bool = False) -> go.Figure:
    """A metric heatmap with the metric's fixed range; rows read top to bottom in the given order."""
    z = np.asarray(matrix, dtype=float)  # (len(rows), len(cols))
    rows_s, cols_s = [short_label(r) for r in rows], [short_label(c) for c in cols]
    custom = np.empty(z.shape + (2,), dtype=object)  # full names for the hover text
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            custom[a, b] = (r, c)
    annotate = z.size <= 144 if annotate is None else annotate
    fig = go.Figure(go.Heatmap(
        z=z, x=cols_s, y=rows_s, customdata=custom,
        zmin=spec.zmin, zmax=spec.zmax, zmid=0.0 if spec.zmin < 0 else None,
        colorscale=spec.colorscale, colorbar=dict(title=dict(text=spec.label, side="right")),
        hovertemplate=(f"{row_title}: %{{customdata[0]}}<br>{col_title}: %{{customdata[1]}}<br>"
                       f"{spec.label}: %{{z:{spec.fmt}}}<extra></extra>"),
        texttemplate=f"%{{z:{spec.fmt}}}" if annotate else None,
        xgap=1, ygap=1,
    ))
    if clickable:
        # Plotly heatmaps emit no selection events; a near-invisible marker on each cell does, so a
        # click on a cell reaches Streamlit's on_select. It carries the same hover text as the cell.
        ys, xs = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")  # (R, C) each
        fig.add_trace(go.Scatter(
            x=[cols_s[c] for c in xs.ravel()], y=[rows_s[r] for r in ys.ravel()], mode="markers",
            customdata=[(rows[r], cols[c], z[r, c]) for r, c in zip(ys.ravel(), xs.ravel())],
            hovertemplate=(f"{row_title}: %{{customdata[0]}}<br>{col_title}: %{{customdata[1]}}<br>"
                           f"{spec.label}: %{{customdata[2]:{spec.fmt}}}<extra></extra>"),
            marker=dict(symbol="square", size=28, opacity=0.01), showlegend=False,
            unselected=dict(marker=dict(opacity=0.01)), selected=dict(marker=dict(opacity=0.01))))
    fig.update_layout(title=title, font=FONT, xaxis_title=col_title, yaxis_title=row_title,
                      yaxis=dict(autorange="reversed", type="category", tickmode="array", tickvals=rows_s),
                      xaxis=dict(type="category", tickangle=-35, tickmode="array", tickvals=cols_s),
                      height=max(380, 150 + 40 * len(rows)), margin=dict(l=10, r=10, t=60, b=10))
    return fig


def spectrum_bar(singular_values: Sequence[float], *, title: str) -> go.Figure:
    """Singular values of one module's delta: a fast drop means the rank is mostly unused."""
    s = np.asarray(singular_values, dtype=float)  # (r,)
    energy = s**2 / max(float((s**2).sum()), 1e-300)  # (r,)
    fig = go.Figure(go.Bar(
        x=[str(k + 1) for k in range(len(s))], y=s, customdata=energy,
        hovertemplate="sigma_%{x} = %{y:.4g}<br>energy share %{customdata:.1%}<extra></extra>"))
    fig.update_layout(title=title, font=FONT, xaxis=dict(title="singular value index", type="category"),
                      yaxis_title="singular value", height=320, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def angle_spectra(curves: dict[str, Sequence[float]], *, title: str) -> go.Figure:
    """Principal angles (degrees, ascending) per module for one pair: small angles = shared directions."""
    fig = go.Figure()
    for module, angles in curves.items():
        a = np.asarray(angles, dtype=float)  # (min(r_i, r_j),)
        fig.add_trace(go.Scatter(
            x=list(range(1, len(a) + 1)), y=a, mode="lines+markers", name=short_label(module, 48),
            hovertemplate=f"{module}<br>angle %{{x}}: %{{y:.1f}} deg<extra></extra>"))
    fig.update_layout(title=title, font=FONT, xaxis=dict(title="principal angle index (ascending)", dtick=1),
                      yaxis=dict(title="angle (deg)", range=[0, 90]), height=420,
                      legend=dict(font=dict(size=10)), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def phi_grid(grid: np.ndarray, *, name_i: str, name_j: str, title: str) -> go.Figure:
    """phi(k, l) of Hu et al. (LoRA paper, fig. 3): overlap of the top-k and top-l directions."""
    z = np.asarray(grid, dtype=float)  # (r_i, r_j)
    ks, ls = list(range(1, z.shape[0] + 1)), list(range(1, z.shape[1] + 1))
    fig = go.Figure(go.Heatmap(
        z=z, x=ls, y=ks, zmin=0.0, zmax=1.0, colorscale="Viridis",
        colorbar=dict(title=dict(text="phi", side="right")),
        hovertemplate=(f"top-%{{y}} of {name_i}<br>top-%{{x}} of {name_j}<br>"
                       "phi = %{z:.3f}<extra></extra>"),
        texttemplate="%{z:.2f}" if z.size <= 100 else None, xgap=1, ygap=1))
    fig.update_layout(title=title, font=FONT, height=max(360, 60 + 30 * len(ks)),
                      xaxis=dict(title=f"l (top directions of {short_label(name_j)})", dtick=1),
                      yaxis=dict(title=f"k (top directions of {short_label(name_i)})", dtick=1, autorange="reversed"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def dendrogram(dendro: dict[str, Any], labels: Sequence[str], *, metric_label: str,
               threshold: float | None = None) -> go.Figure:
    """Draw scipy's `dendrogram(no_plot=True)` layout: leaves sit at x = 5, 15, 25, ..."""
    fig = go.Figure()
    for xs, ys in zip(dendro["icoord"], dendro["dcoord"]):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#1f5f8b", width=2),
                                 hovertemplate="merge height %{y:.3f}<extra></extra>", showlegend=False))
    leaves = dendro.get("ivl") or [labels[i] for i in dendro["leaves"]]
    ticks = [5 + 10 * k for k in range(len(leaves))]
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="#c0392b", dash="dash"),
                      annotation_text=f"cut at {threshold:.3f}", annotation_position="top right")
    fig.update_layout(font=FONT, height=440, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(tickvals=ticks, ticktext=[short_label(x) for x in leaves], tickangle=-30,
                                 title="adapter", range=[0, 10 * len(leaves)], automargin=True),
                      yaxis=dict(title=f"distance ({metric_label})", rangemode="tozero"))
    return fig


def capacity_chart(layers: Sequence[str], measured: Sequence[float], floor: Sequence[float], *,
                   title: str) -> go.Figure:
    """Measured mean overlap per layer next to the floor no arrangement can go below."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(layers), y=list(measured), name="measured mean overlap",
                         hovertemplate="%{x}<br>measured %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(layers), y=list(floor), name="unavoidable floor", mode="lines+markers",
                             line=dict(color="#c0392b"),
                             hovertemplate="%{x}<br>floor %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, font=FONT, yaxis=dict(title="mean normalised overlap", range=[0, 1]),
                      xaxis=dict(title="layer / module", type="category", tickangle=-35), height=420,
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1.0, xanchor="right"),
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def rank_vs_width(layers: Sequence[str], union_rank: Sequence[float], width: Sequence[float], *,
                  title: str) -> go.Figure:
    """Effective rank of the union of all adapters' subspaces against the layer's width."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(layers), y=list(union_rank), name="union effective rank",
                         hovertemplate="%{x}<br>union rank %{y:.1f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(layers), y=list(width), name="width d", mode="lines",
                             line=dict(color="#7f8c8d", dash="dot"),
                             hovertemplate="%{x}<br>width %{y}<extra></extra>"))
    top = 1.08 * max([*width, *union_rank, 1])
    fig.update_layout(title=title, font=FONT, yaxis=dict(title="dimensions", range=[0, top]),
                      xaxis=dict(title="layer / module", type="category", tickangle=-35), height=380,
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1.0, xanchor="right"),
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig
