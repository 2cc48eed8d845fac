"""The adapter map's embedding: MDS recovers planar distances, t-SNE keeps clusters apart, neighbours match brute force."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from analysis.embedding import choose_method, embed_distances, embed_features, nearest_neighbours, stress
from analysis.errors import AtlasError


def _planar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pts = np.random.default_rng(seed).normal(size=(n, 2))  # (n, 2)
    return pts, squareform(pdist(pts))  # (n, n)


def test_mds_recovers_distances_of_planar_points() -> None:
    _, D = _planar(12)
    coords = embed_distances(D, method="mds")
    assert coords.shape == (12, 2)
    np.testing.assert_allclose(squareform(pdist(coords)), D, atol=1e-3)  # a second route: the map's own distances
    assert stress(D, coords) < 1e-3


def test_same_input_same_map_and_centred() -> None:
    _, D = _planar(9, seed=3)
    a, b = embed_distances(D, seed=1), embed_distances(D, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=1e-9)


def test_tsne_keeps_two_far_clusters_apart() -> None:
    rng = np.random.default_rng(0)
    pts = np.vstack([rng.normal(0, 0.1, (30, 5)), rng.normal(5, 0.1, (30, 5))])  # (60, 5)
    D = squareform(pdist(pts))
    coords = embed_distances(D, method="tsne", seed=0)
    left, right = coords[:30].mean(axis=0), coords[30:].mean(axis=0)
    spread = max(coords[:30].std(axis=0).max(), coords[30:].std(axis=0).max())
    assert np.linalg.norm(left - right) > 3 * spread
    assert choose_method(60) == "mds" and choose_method(5000) == "tsne"


def test_small_sets_are_placed_exactly() -> None:
    assert embed_distances(np.zeros((1, 1))).shape == (1, 2)
    two = embed_distances(np.array([[0.0, 0.4], [0.4, 0.0]]))
    assert np.linalg.norm(two[0] - two[1]) == pytest.approx(0.4)


def test_nearest_neighbours_match_brute_force() -> None:
    _, D = _planar(15, seed=5)
    nn = nearest_neighbours(D, k=4)
    for i in range(15):
        others = sorted((D[i, j], j) for j in range(15) if j != i)
        assert list(nn[i]) == [j for _, j in others[:4]]
    assert nearest_neighbours(D, k=50).shape == (15, 14)


def test_pca_route_on_features() -> None:
    X = np.zeros((6, 4))
    X[:, 0] = np.arange(6)  # all spread on one feature axis
    coords = embed_features(X)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(np.arange(6) - 2.5), atol=1e-9)
    np.testing.assert_allclose(coords[:, 1], 0.0, atol=1e-9)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(AtlasError, match="square"):
        embed_distances(np.zeros((2, 3)))
    with pytest.raises(AtlasError, match="unknown embedding method"):
        embed_distances(np.zeros((3, 3)), method="umap")
