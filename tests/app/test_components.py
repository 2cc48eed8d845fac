"""Figure builders and download formats: fixed colour ranges per metric, hover text, CSV/JSON round trips."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from app.components import figures
from app.components.display import matrix_csv, matrix_json
from app.components.metrics import DISTANCE_OF_METRIC, METRICS


@pytest.mark.parametrize("key,lo,hi", [("cosine", -1, 1), ("subspace_similarity", 0, 1), ("energy_overlap", 0, 1),
                                       ("mean_angle_deg", 0, 90)])
def test_heatmap_range_is_the_metric_range_not_the_data(key: str, lo: float, hi: float) -> None:
    z = np.array([[0.1, 0.2], [0.2, 0.1]])  # (2, 2) a narrow band of values
    fig = figures.heatmap(z, ["alpha", "beta"], ["alpha", "beta"], METRICS[key], title="t")
    trace = fig.data[0]
    assert (trace.zmin, trace.zmax) == (lo, hi)
    assert (trace.zmid == 0.0) == (key == "cosine")  # only the signed metric is centred
    assert "%{customdata[0]}" in trace.hovertemplate and "%{customdata[1]}" in trace.hovertemplate
    assert METRICS[key].label in trace.hovertemplate
    assert tuple(trace.customdata[0][1]) == ("alpha", "beta")


def test_long_names_are_shortened_on_axes_but_full_in_hover() -> None:
    long = "a" * 20 + "_curriculum_stage_one_of_three"
    fig = figures.heatmap(np.eye(2), [long, "b"], [long, "b"], METRICS["cosine"], title="t")
    shown = fig.data[0].y[0]
    assert len(shown) <= 28 and shown.startswith("aaaa") and shown.endswith("of_three") and "…" in shown
    assert fig.data[0].customdata[0][0][0] == long


def test_csv_round_trip_keeps_labels_and_values() -> None:
    m = np.array([[1.0, -0.25], [1 / 3, np.nan]])  # (2, 2)
    text = matrix_csv(m, ["a,1", 'b"2'], ["x", "y"])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["", "x", "y"] and rows[1][0] == "a,1" and rows[2][0] == 'b"2'
    assert float(rows[2][1]) == 1 / 3 and np.isnan(float(rows[2][2]))


def test_json_has_nulls_for_nan_and_meta() -> None:
    out = json.loads(matrix_json(np.array([[0.5, np.nan]]), ["r"], ["c1", "c2"], metric="cosine"))
    assert out == {"metric": "cosine", "rows": ["r"], "cols": ["c1", "c2"], "values": [[0.5, None]]}


def test_dendrogram_draws_scipy_layout() -> None:
    from scipy.cluster.hierarchy import dendrogram, linkage

    z = linkage(np.array([0.1, 0.8, 0.7]), method="average")  # condensed distances of 3 points
    layout = dendrogram(z, no_plot=True, labels=["a", "b", "c"])
    fig = figures.dendrogram(layout, ["a", "b", "c"], metric_label="angle", threshold=0.5)
    assert len(fig.data) == 2  # one U per merge
    assert list(fig.layout.xaxis.ticktext) == layout["ivl"]
    assert max(max(t.y) for t in fig.data) == pytest.approx(z[-1, 2])


def test_every_metric_has_a_clustering_distance() -> None:
    from analysis.clustering import DISTANCE_METRICS
    from analysis.overlap import METRICS as LIBRARY_METRICS

    assert set(METRICS) == set(LIBRARY_METRICS)
    assert set(DISTANCE_OF_METRIC) == set(METRICS) and set(DISTANCE_OF_METRIC.values()) <= set(DISTANCE_METRICS)


def test_data_colour_range_skips_the_diagonal_and_masks_it() -> None:
    z = np.array([[1.0, 0.05, 0.2], [0.05, 1.0, 0.1], [0.2, 0.1, 1.0]])  # (3, 3) similarities
    lo, hi = figures.color_range(z, METRICS["subspace_similarity"])
    assert (lo, hi) == (0.05, 0.2)
    fig = figures.heatmap(z, list("abc"), list("abc"), METRICS["subspace_similarity"], title="t",
                          mask_diagonal=True, zrange=(lo, hi))
    shown = np.array(fig.data[0].z, dtype=float)
    assert np.isnan(np.diag(shown)).all() and shown[0, 2] == 0.2 and (fig.data[0].zmin, fig.data[0].zmax) == (lo, hi)
    signed = figures.color_range(np.array([[1.0, -0.3], [0.1, 1.0]]), METRICS["cosine"])
    assert signed == (-0.3, 0.3)  # signed metrics stay centred on 0


def test_dendrogram_colours_groups_and_draws_the_cut() -> None:
    from analysis.clustering import Linkage, cut_height

    D = np.array([[0, .8, .95, .95], [.8, 0, .95, .95], [.95, .95, 0, .85], [.95, .95, .85, 0]], dtype=float)
    fit = Linkage().fit(D, list("abcd"))
    groups = fit.cut(k=2).tolist()
    t = cut_height(fit.linkage_, 2)
    assert 0.85 < t < 0.95
    fig = figures.dendrogram(fit.dendrogram_, list("abcd"), metric_label="d", threshold=t, groups=groups)
    colours = [tr.line.color for tr in fig.data]
    assert colours.count(figures.ABOVE_CUT) == 1  # only the top merge lies above the cut
    assert len({c for c in colours if c != figures.ABOVE_CUT}) == 2  # one colour per group
    lo, hi = fig.layout.yaxis.range
    assert 0.5 < lo < 0.8 and 0.95 < hi < 1.0  # fitted to the merges (0.8 to 0.95), not 0..1
    assert any("cut at" in a.text for a in fig.layout.annotations)
