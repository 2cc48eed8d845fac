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
# Qualitative colours that stay apart for colour-blind readers (Okabe-Ito, then Plotly's D3 tail):
# group g is drawn in GROUP_COLOURS[g] on the dendrogram, the groups table and the adapter map alike.
GROUP_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
                 "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]
ABOVE_CUT = "#9aa5b1"


def group_colour(group: int) -> str:
    return GROUP_COLOURS[int(group) % len(GROUP_COLOURS)]


def color_range(matrix: np.ndarray, spec: MetricSpec, *, exclude_diagonal: bool = True) -> tuple[float, float]:
    """The colour range the data needs (off-diagonal cells only by default), inside the metric's own range.

    Signed metrics stay centred on 0 (symmetric range), so white still means orthogonal.
    """
    z = np.asarray(matrix, dtype=float)  # (R, C)
    values = z[~np.eye(*z.shape, dtype=bool)] if exclude_diagonal and z.ndim == 2 and z.shape[0] == z.shape[1] \
        else z.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return spec.zmin, spec.zmax
    if spec.zmin < 0:
        top = float(min(max(np.abs(values).max(), 1e-6), spec.zmax))
        return -top, top
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = max(spec.zmin, lo - 0.05), min(spec.zmax, hi + 0.05)
    return max(spec.zmin, lo), min(spec.zmax, hi)


def short_label(label: str, limit: int = 28) -> str:
    """Keep both ends of a long name (task prefix and variant suffix), drop the middle."""
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[-(limit - 1 - head):]


def short_module(module: str) -> str:
    """`model.layers.29.self_attn.o_proj` as `29.self_attn.o_proj` (the URL's form); other names shortened."""
    from analysis.overlap import parse_module_name

    layer, kind = parse_module_name(module)
    return f"{layer}.{kind}" if layer != "" else short_label(module, 48)


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], spec: MetricSpec, *,
            title: str, row_title: str = "adapter", col_title: str = "adapter",
            annotate: bool | None = None, clickable: bool = False, mask_diagonal: bool = False,
            zrange: tuple[float, float] | None = None) -> go.Figure:
    """A metric heatmap; rows read top to bottom in the given order.

    The colour range is the metric's fixed range unless `zrange` is given (see `color_range`).
    `mask_diagonal` blanks the self-comparisons (always 1 or 0) so they neither take a colour nor
    stretch the range; their hover still says what they are.
    """
    z = np.asarray(matrix, dtype=float).copy()  # (len(rows), len(cols))
    if mask_diagonal and z.ndim == 2 and z.shape[0] == z.shape[1]:
        np.fill_diagonal(z, np.nan)
    zmin, zmax = zrange if zrange is not None else (spec.zmin, spec.zmax)
    rows_s, cols_s = [short_label(r) for r in rows], [short_label(c) for c in cols]
    custom = np.empty(z.shape + (2,), dtype=object)  # full names for the hover text
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            custom[a, b] = (r, c)
    annotate = z.size <= 144 if annotate is None else annotate
    fig = go.Figure(go.Heatmap(
        z=z, x=cols_s, y=rows_s, customdata=custom,
        zmin=zmin, zmax=zmax, zmid=0.0 if spec.zmin < 0 else None, hoverongaps=False,
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
            customdata=[(rows[r], cols[c], "self" if np.isnan(z[r, c]) else f"{z[r, c]:{spec.fmt}}")
                        for r, c in zip(ys.ravel(), xs.ravel())],
            hovertemplate=(f"{row_title}: %{{customdata[0]}}<br>{col_title}: %{{customdata[1]}}<br>"
                           f"{spec.label}: %{{customdata[2]}}<br><i>click to open this pair</i><extra></extra>"),
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
            x=list(range(1, len(a) + 1)), y=a, mode="lines+markers", name=short_module(module),
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
               threshold: float | None = None, groups: Sequence[int] | None = None,
               cut_label: str | None = None) -> go.Figure:
    """Draw scipy's `dendrogram(no_plot=True)` layout (leaves at x = 5, 15, 25, ...).

    The y axis fits the merge heights (angle-based distances often all sit between 0.8 and 0.95, where
    a 0-based axis piles them up); the legs run down to its bottom edge. With `groups` (per adapter,
    input order), links inside one group take the group's colour and the leaf labels too; links above
    the cut stay grey. `threshold` draws the cut as a dashed line with its label inside the plot.
    """
    fig = go.Figure()
    leaves_idx = list(dendro.get("leaves") or range(len(labels)))
    leaf_group = [groups[i] for i in leaves_idx] if groups is not None else None
    tops = [max(ys) for ys in dendro["dcoord"]] or [0.0]
    for xs, ys in zip(dendro["icoord"], dendro["dcoord"]):
        colour = "#1f5f8b"
        if leaf_group is not None:
            below = threshold is None or max(ys) < threshold
            pos = min(max(int((xs[0] - 5) // 10), 0), len(leaf_group) - 1)  # a leaf under the left child
            colour = group_colour(leaf_group[pos]) if below else ABOVE_CUT
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=2.5),
                                 hovertemplate="merge at distance %{y:.3f}<extra></extra>", showlegend=False))
    leaves = dendro.get("ivl") or [labels[i] for i in leaves_idx]
    ticks = [5 + 10 * k for k in range(len(leaves))]
    lo, hi = min(tops), max(tops)
    pad = max(hi - lo, 0.02) * 0.12
    y_range = [max(0.0, lo - 3 * pad), hi + 2 * pad]
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="#c0392b", dash="dash", width=2))
        fig.add_annotation(x=0, xref="paper", y=threshold, yref="y", xanchor="left", yanchor="bottom",
                           text=cut_label or f"cut at {threshold:.3f}", showarrow=False,
                           font=dict(color="#c0392b", size=12), bgcolor="rgba(255,255,255,0.85)")
        y_range = [min(y_range[0], threshold - pad), max(y_range[1], threshold + pad)]
    if leaf_group is not None:
        ticktext = [f"<span style='color:{group_colour(g)}'>{short_label(x)}</span>" for x, g in zip(leaves, leaf_group)]
    else:
        ticktext = [short_label(x) for x in leaves]
    fig.update_layout(font=FONT, height=460, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(tickvals=ticks, ticktext=ticktext, tickangle=-30, title="adapter",
                                 range=[0, 10 * len(leaves)], automargin=True),
                      yaxis=dict(title=f"merge distance ({metric_label})", range=y_range, automargin=True))
    return fig


def capacity_chart(layers: Sequence[str], measured: Sequence[float], floor: Sequence[float], *,
                   title: str) -> go.Figure:
    """Measured mean overlap per layer next to the floor no arrangement can go below."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(layers), y=list(measured), name="measured mean overlap",
                         hovertemplate="%{x}<br>measured %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(layers), y=list(floor), name="unavoidable floor", mode="lines+markers",
                             line=dict(color="#c0392b", width=3), marker=dict(size=7, symbol="diamond"),
                             cliponaxis=False,
                             hovertemplate="%{x}<br>floor %{y:.3f}<extra></extra>"))
    top = max([*measured, *floor, 0.0])
    fig.update_layout(title=title, font=FONT,
                      yaxis=dict(title="mean normalised overlap", range=[-0.02 * max(top, 0.05), 1.15 * max(top, 0.05)],
                                 zeroline=True, zerolinecolor="#d0d4d9"),
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
