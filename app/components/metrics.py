"""How each overlap metric is shown: its label, fixed colour range, scale and one line of help.

The fixed range is each metric's whole range: cosine is signed (a diverging scale centred on 0),
similarities and energy shares live in [0, 1], angles in [0, 90] degrees (small = collision, so that
scale is reversed). Heatmaps of an adapter set use the range of their off-diagonal data instead
(`figures.color_range`, stated in the caption): the diagonal is 1 by definition and real overlaps
are often 0.05-0.2, which the whole range would wash into one colour.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    key: str  # the ModuleOverlap attribute and the name the library's aggregate/distance accept
    label: str
    zmin: float
    zmax: float
    colorscale: str
    fmt: str  # d3 / python format for values
    help: str
    higher_is_closer: bool = True


METRICS: dict[str, MetricSpec] = {
    m.key: m
    for m in (
        MetricSpec("cosine", "Cosine of the updates", -1.0, 1.0, "RdBu_r", ".3f",
                   "do the two updates point the same way? −1 to 1, 0 = orthogonal"),
        MetricSpec("subspace_similarity", "Subspace similarity (Hu et al.)", 0.0, 1.0, "Viridis", ".3f",
                   "do they write into the same output directions? 0 to 1"),
        MetricSpec("input_subspace_similarity", "Input subspace similarity", 0.0, 1.0, "Viridis", ".3f",
                   "do they read the same input features? 0 to 1"),
        MetricSpec("energy_overlap", "Energy overlap", 0.0, 1.0, "Viridis", ".3f",
                   "how much of the row's update lies in the column's output space? 0 to 1, not symmetric"),
        MetricSpec("mean_angle_deg", "Mean principal angle (deg)", 0.0, 90.0, "Viridis_r", ".1f",
                   "average angle between their output directions: 0° = same, 90° = orthogonal",
                   higher_is_closer=False),
    )
}


def metric_label(key: str) -> str:
    return METRICS[key].label


def metric_help() -> str:
    """One short line per metric (markdown list), for a control's help tooltip."""
    return "\n".join(f"- **{m.label}**: {m.help}" for m in METRICS.values())


# Distances the clustering library offers (analysis.clustering.DISTANCE_METRICS), and the one that
# orders a heatmap of each overlap metric.
DISTANCES: dict[str, str] = {
    "cosine": "1 − |cosine| of the whole updates",
    "subspace": "1 − subspace similarity of output spaces",
    "energy": "1 − mean of the two directed energy overlaps",
    "angle": "mean principal angle / 90°",
}
DISTANCE_OF_METRIC: dict[str, str] = {
    "cosine": "cosine", "subspace_similarity": "subspace", "input_subspace_similarity": "subspace",
    "energy_overlap": "energy", "mean_angle_deg": "angle",
}
