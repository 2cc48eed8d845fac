"""How each overlap metric is shown: its label, fixed colour range and scale.

Fixed ranges matter: a heatmap that rescales to its own min/max makes 0.02 look like 0.9. Cosine is
signed, so it gets a diverging scale centred on 0; similarities and energy shares live in [0, 1];
angles in [0, 90] degrees, where small means collision, so that scale is reversed.
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
                   "<dW_i, dW_j>_F / (|dW_i| |dW_j|): signed, 0 = orthogonal updates"),
        MetricSpec("subspace_similarity", "Subspace similarity (Hu et al.)", 0.0, 1.0, "Viridis", ".3f",
                   "|U_i^T U_j|_F^2 / min(r_i, r_j): 1 = same output subspace"),
        MetricSpec("input_subspace_similarity", "Input subspace similarity", 0.0, 1.0, "Viridis", ".3f",
                   "the same similarity on the input (row) spaces: do they read the same features?"),
        MetricSpec("energy_overlap", "Energy overlap", 0.0, 1.0, "Viridis", ".3f",
                   "share of dW_i's energy inside dW_j's column space (row i, column j)"),
        MetricSpec("mean_angle_deg", "Mean principal angle (deg)", 0.0, 90.0, "Viridis_r", ".1f",
                   "mean principal angle between output subspaces: 0 = collide, 90 = orthogonal",
                   higher_is_closer=False),
    )
}


def metric_label(key: str) -> str:
    return METRICS[key].label


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
