"""Grouping adapters: distances from overlap tables, hierarchical linkage, cuts, connected components.

Distances come from angle-like measures (1 - |cos|, 1 - phi, mean angle / 90), which are not
Euclidean, so only average and complete linkage are offered: ward and centroid assume squared
Euclidean distances and would silently produce meaningless merges heights.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.cluster.hierarchy import dendrogram, fcluster, leaves_list, linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components as _cc
from scipy.spatial.distance import squareform

from analysis.errors import AtlasError
from analysis.overlap import aggregate

log = logging.getLogger(__name__)

DISTANCE_METRICS = ("cosine", "subspace", "energy", "angle")
LINKAGE_METHODS = ("average", "complete")


def adapter_distance(table: Mapping[str, Any], metric: str = "cosine", *, modules: Sequence[str] | None = None) -> np.ndarray:
    """(N, N) distances in [0, 1], energy-weighted over shared modules, zero diagonal, symmetric.

    cosine: 1 - |cos| of the whole updates (a sign flip is the same direction for interference);
    subspace: 1 - phi of output spaces; energy: 1 - mean of the two directed energy overlaps;
    angle: mean principal angle / 90 degrees.
    """
    if metric == "cosine":
        d = 1.0 - np.abs(aggregate(table, "cosine", modules=modules))
    elif metric == "subspace":
        d = 1.0 - aggregate(table, "subspace_similarity", modules=modules)
    elif metric == "energy":
        e = aggregate(table, "energy_overlap", modules=modules)
        d = 1.0 - (e + e.T) / 2.0
    elif metric == "angle":
        d = aggregate(table, "mean_angle_deg", modules=modules) / 90.0
    else:
        raise AtlasError(f"unknown distance metric {metric!r}; choose one of {', '.join(DISTANCE_METRICS)}")
    d = np.clip((d + d.T) / 2.0, 0.0, 1.0)  # (N, N)
    np.fill_diagonal(d, 0.0)
    return d


class Linkage:
    """Hierarchical clustering of adapters from a distance matrix (scipy linkage, sklearn-style estimator).

    After `fit`: `linkage_` (scipy's (N-1, 4) matrix), `order_` (dendrogram leaf order),
    `dendrogram_` (scipy `dendrogram(..., no_plot=True)` coordinates: icoord, dcoord, ivl, leaves,
    ready for plotly), `labels_` (the names given to fit).
    """

    def __init__(self, method: str = "average") -> None:
        self.method = method

    def fit(self, D: np.ndarray, labels: Sequence[str] | None = None) -> "Linkage":
        D = np.asarray(D, dtype=np.float64)
        if self.method not in LINKAGE_METHODS:
            raise AtlasError(
                f"linkage {self.method!r} is not offered: ward/centroid/median assume Euclidean distances, "
                f"these are angle-based; choose one of {', '.join(LINKAGE_METHODS)}"
            )
        if D.ndim != 2 or D.shape[0] != D.shape[1]:
            raise AtlasError(f"distance matrix must be square, got shape {D.shape}")
        if not np.allclose(D, D.T, atol=1e-9) or not np.isfinite(D).all() or (D < -1e-12).any():
            raise AtlasError("distance matrix must be finite, symmetric and non-negative")
        n = D.shape[0]
        self.labels_ = list(labels) if labels is not None else [str(i) for i in range(n)]
        if len(self.labels_) != n:
            raise AtlasError(f"{len(self.labels_)} labels for {n} adapters")
        self.n_ = n
        if n < 2:
            self.linkage_ = np.zeros((0, 4))
            self.order_ = np.arange(n)
            self.dendrogram_ = {"icoord": [], "dcoord": [], "ivl": self.labels_, "leaves": list(range(n))}
            return self
        # 1. condensed distances, 2. linkage, 3. leaf order and drawable coordinates
        condensed = squareform(np.clip((D + D.T) / 2.0, 0.0, None), checks=False)  # (N (N-1) / 2,)
        self.linkage_ = linkage(condensed, method=self.method)  # (N-1, 4)
        self.order_ = leaves_list(self.linkage_)  # (N,)
        self.dendrogram_ = dendrogram(self.linkage_, no_plot=True, labels=self.labels_)
        return self

    def cut(self, k: int | None = None, threshold: float | None = None) -> np.ndarray:
        """Flat cluster labels 0..g-1 (numbered by first appearance): exactly k groups, or merge below a distance threshold."""
        if not hasattr(self, "linkage_"):
            raise AtlasError("call fit() before cut()")
        if (k is None) == (threshold is None):
            raise AtlasError("cut needs exactly one of k (number of groups) or threshold (distance)")
        if self.n_ < 2:
            return np.zeros(self.n_, dtype=int)
        if k is not None:
            if not 1 <= k <= self.n_:
                raise AtlasError(f"number of groups must be between 1 and {self.n_}, got {k}")
            raw = fcluster(self.linkage_, t=k, criterion="maxclust")
        else:
            if threshold < 0:
                raise AtlasError(f"distance threshold must be >= 0, got {threshold}")
            raw = fcluster(self.linkage_, t=threshold, criterion="distance")
        return _renumber(raw)


def _renumber(raw: np.ndarray) -> np.ndarray:
    """Labels 0, 1, ... in order of first appearance, so equal partitions print equally."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(x), len(seen)) for x in raw], dtype=int)


def connected_components(similarity: np.ndarray, tau: float) -> np.ndarray:
    """Groups of items linked (transitively) by similarity >= tau, labels by first appearance.

    This is the grouping rule of Wang, Liang & Peng (EMNLP 2025) for tasks whose core-region
    Jaccard index reaches tau (paper default 0.1); it applies to any symmetric similarity.
    """
    s = np.asarray(similarity, dtype=np.float64)  # (N, N)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise AtlasError(f"similarity matrix must be square, got shape {s.shape}")
    adj = (s >= tau) | (s.T >= tau)  # (N, N)
    np.fill_diagonal(adj, False)
    _, raw = _cc(csr_matrix(adj), directed=False)
    return _renumber(raw)


def silhouettes(D: np.ndarray, Z: np.ndarray) -> dict[int, float]:
    """Mean silhouette (scikit-learn, on the precomputed distances) of the cut at each k in 2..N-1."""
    from sklearn.metrics import silhouette_score

    D = np.asarray(D, dtype=np.float64)  # (N, N)
    n = D.shape[0]
    scores: dict[int, float] = {}
    for k in range(2, n):
        labels = fcluster(Z, t=k, criterion="maxclust")  # (N,)
        if 2 <= len(set(labels.tolist())) <= n - 1:
            scores[k] = float(silhouette_score(D, labels, metric="precomputed"))
    return scores


def best_cut(D: np.ndarray, Z: np.ndarray) -> tuple[int, dict[int, float]]:
    """The number of groups with the highest mean silhouette (fewest groups on ties), and every score.

    With fewer than three adapters no cut can be scored, so the answer is one group.
    """
    scores = silhouettes(D, Z)
    if not scores:
        return 1, scores
    best = max(scores.values())
    return min(k for k, s in scores.items() if s >= best - 1e-12), scores


def cut_height(Z: np.ndarray, k: int) -> float:
    """A distance at which the tree falls into exactly k groups: halfway between the merges around the cut."""
    heights = np.sort(np.asarray(Z, dtype=np.float64)[:, 2])  # (N-1,) ascending for average/complete
    n = len(heights) + 1
    if not 1 <= k <= n:
        raise AtlasError(f"number of groups must be between 1 and {n}, got {k}")
    below = heights[n - k - 1] if n - k - 1 >= 0 else 0.0  # the last merge kept inside groups
    above = heights[n - k] if n - k < len(heights) else below  # the first merge the cut undoes
    if k == 1:
        return float(heights[-1]) if len(heights) else 0.0
    return float((below + above) / 2.0)
