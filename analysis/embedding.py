"""A 2-D map of adapters from their pairwise distances, and each adapter's nearest neighbours.

Data in, data out: a precomputed (N, N) distance matrix (e.g. `clustering.adapter_distance`) goes
in, plain arrays come out. The method follows N:
- N <= 2: exact placement on a line (nothing to fit);
- small N (<= `mds_limit`): metric MDS on the distances (scikit-learn SMACOF, classical-MDS start),
  which keeps the distances themselves as well as two dimensions allow;
- many: t-SNE on the precomputed distances (random start, as precomputed metrics require), which
  keeps neighbourhoods rather than distances and scales to thousands of points.
`embed_features` is the third route for a population given as feature rows (sketches): PCA.
All routes are seeded, so the same input draws the same map.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np

from analysis.errors import AtlasError

log = logging.getLogger(__name__)

EMBEDDING_METHODS = ("auto", "mds", "tsne")
MDS_LIMIT = 300  # SMACOF is O(N^2) per iteration and its stress stops being readable beyond a few hundred points


def _check_distances(D: np.ndarray) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise AtlasError(f"distance matrix must be square, got shape {D.shape}")
    if not np.isfinite(D).all() or (D < -1e-12).any():
        raise AtlasError("distance matrix must be finite and non-negative")
    D = np.clip((D + D.T) / 2.0, 0.0, None)  # (N, N)
    np.fill_diagonal(D, 0.0)
    return D


def choose_method(n: int, *, mds_limit: int = MDS_LIMIT) -> str:
    """'mds' up to `mds_limit` points, 'tsne' beyond (what `method='auto'` picks)."""
    return "mds" if n <= mds_limit else "tsne"


def _mds(D: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import MDS

    params = inspect.signature(MDS).parameters
    if "metric_mds" in params:  # scikit-learn >= 1.8: `metric` names the input, `init` may be classical MDS
        model = MDS(n_components=2, metric="precomputed", init="classical_mds", random_state=seed,
                    normalized_stress="auto")
    else:
        model = MDS(n_components=2, dissimilarity="precomputed", n_init=4, random_state=seed,
                    normalized_stress="auto")
    return model.fit_transform(D)  # (N, 2)


def _tsne(D: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = D.shape[0]
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))  # t-SNE needs perplexity < N
    model = TSNE(n_components=2, metric="precomputed", init="random", perplexity=perplexity, random_state=seed)
    return model.fit_transform(D)  # (N, 2)


def _orient(coords: np.ndarray) -> np.ndarray:
    """Centre, put the widest spread on x, and fix signs, so reruns and small edits do not mirror the map."""
    c = coords - coords.mean(axis=0, keepdims=True)  # (N, 2)
    if len(c) >= 2 and np.abs(c).max() > 0:
        _, _, vt = np.linalg.svd(c, full_matrices=False)  # principal axes of the point cloud
        c = c @ vt.T  # (N, 2)
        for axis in range(c.shape[1]):
            big = np.argmax(np.abs(c[:, axis]))
            if c[big, axis] < 0:
                c[:, axis] = -c[:, axis]
    return c


def embed_distances(D: np.ndarray, *, method: str = "auto", seed: int = 0, mds_limit: int = MDS_LIMIT) -> np.ndarray:
    """(N, 2) coordinates whose Euclidean distances follow `D` (MDS) or its neighbourhoods (t-SNE)."""
    if method not in EMBEDDING_METHODS:
        raise AtlasError(f"unknown embedding method {method!r}; choose one of {', '.join(EMBEDDING_METHODS)}")
    D = _check_distances(D)
    n = D.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if n == 1:
        return np.zeros((1, 2))
    if n == 2:
        half = D[0, 1] / 2.0
        return np.array([[-half, 0.0], [half, 0.0]])
    chosen = choose_method(n, mds_limit=mds_limit) if method == "auto" else method
    if chosen == "tsne" and n < 5:
        chosen = "mds"  # t-SNE needs a handful of points to define a perplexity
    log.debug("embedding %d adapters with %s", n, chosen)
    coords = _mds(D, seed) if chosen == "mds" else _tsne(D, seed)
    return _orient(np.asarray(coords, dtype=np.float64))


def embed_features(X: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(N, 2) PCA coordinates of feature rows (e.g. fixed-size sketches of many adapters)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)  # (N, F)
    if X.ndim != 2:
        raise AtlasError(f"features must be a 2-D array (adapters x features), got shape {X.shape}")
    if len(X) < 2:
        return np.zeros((len(X), 2))
    k = min(2, X.shape[0], X.shape[1])
    coords = np.zeros((len(X), 2))
    coords[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(X)  # (N, k)
    return _orient(coords)


def nearest_neighbours(D: np.ndarray, k: int = 3) -> np.ndarray:
    """(N, min(k, N-1)) indices of each adapter's closest others, nearest first (ties by index)."""
    D = _check_distances(D)
    n = D.shape[0]
    k = max(0, min(k, n - 1))
    masked = D + np.diag(np.full(n, np.inf))  # (N, N) never one's own neighbour
    order = np.argsort(masked, axis=1, kind="stable")  # (N, N)
    return order[:, :k]


def stress(D: np.ndarray, coords: np.ndarray) -> float:
    """Kruskal's stress-1 of a map: 0 = the map's distances equal D exactly; below ~0.1 reads as faithful."""
    from scipy.spatial.distance import pdist, squareform

    D = _check_distances(D)
    E = squareform(pdist(np.asarray(coords, dtype=np.float64)))  # (N, N)
    denom = float((D**2).sum())
    return float(np.sqrt(((D - E) ** 2).sum() / denom)) if denom > 0 else 0.0
