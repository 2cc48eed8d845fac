"""Clustering recovers planted groups from real overlap tables, for every distance metric."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.clustering import DISTANCE_METRICS, Linkage, adapter_distance, connected_components
from analysis.errors import AtlasError
from analysis.overlap import overlap_table

MODULES = [f"model.layers.{l}.self_attn.{p}" for l in range(2) for p in ("q_proj", "v_proj")]


def _planted(seed: int, groups: list[int], noise: float = 0.15) -> list[Adapter]:
    """Adapters whose updates share a per-group factor pair (B_g, A_g) plus independent noise."""
    rng = np.random.default_rng(seed)
    n, r = 32, 3
    centers = {g: {m: (rng.standard_normal((n, r)), rng.standard_normal((r, n))) for m in MODULES} for g in set(groups)}
    adapters = []
    for i, g in enumerate(groups):
        mods = {}
        for m in MODULES:
            B, A = centers[g][m]
            mods[m] = LowRankDelta(A=torch.from_numpy(A + noise * rng.standard_normal(A.shape)),
                                   B=torch.from_numpy(B + noise * rng.standard_normal(B.shape)), scale=1.0)
        adapters.append(Adapter(name=f"ad{i}", path=Path("."), format="peft", base_model=None, config={}, modules=mods))
    return adapters


@pytest.mark.parametrize("metric", DISTANCE_METRICS)
@pytest.mark.parametrize("method", ["average", "complete"])
def test_linkage_recovers_planted_groups(metric: str, method: str) -> None:
    groups = [0, 0, 1, 2, 1, 0, 2, 1]
    table = overlap_table(_planted(7, groups))
    D = adapter_distance(table, metric)
    assert D.shape == (8, 8) and np.allclose(D, D.T) and np.all(np.diag(D) == 0) and D.min() >= 0 and D.max() <= 1
    same = np.equal.outer(groups, groups) & ~np.eye(8, dtype=bool)
    assert D[same].max() < D[~np.equal.outer(groups, groups)].min()  # planted structure is visible
    model = Linkage(method).fit(D, labels=[a for a in table[MODULES[0]].adapters])
    assert model.cut(k=3).tolist() == groups  # renumbered by first appearance, so directly comparable
    gap = (D[same].max() + D[~np.equal.outer(groups, groups)].min()) / 2
    assert model.cut(threshold=gap).tolist() == groups
    assert model.linkage_.shape == (7, 4)
    assert sorted(model.order_.tolist()) == list(range(8))
    assert len(model.dendrogram_["icoord"]) == 7 and len(model.dendrogram_["ivl"]) == 8
    # members of one group sit next to each other in the dendrogram order
    ordered = [groups[i] for i in model.order_]
    assert sum(a != b for a, b in zip(ordered, ordered[1:])) == 2


def test_linkage_refuses_euclidean_methods_and_bad_input() -> None:
    D = np.array([[0.0, 0.5], [0.5, 0.0]])
    with pytest.raises(AtlasError, match="ward"):
        Linkage("ward").fit(D)
    with pytest.raises(AtlasError, match="symmetric"):
        Linkage().fit(np.array([[0.0, 0.1], [0.5, 0.0]]))
    model = Linkage().fit(D)
    with pytest.raises(AtlasError, match="exactly one"):
        model.cut()
    assert model.cut(k=1).tolist() == [0, 0] and model.cut(k=2).tolist() == [0, 1]
    assert Linkage().fit(np.zeros((1, 1)), ["solo"]).cut(k=1).tolist() == [0]


def test_connected_components_is_transitive_and_thresholded() -> None:
    S = np.array([
        [1.0, 0.2, 0.0, 0.0, 0.0],
        [0.2, 1.0, 0.15, 0.0, 0.0],
        [0.0, 0.15, 1.0, 0.05, 0.0],
        [0.0, 0.0, 0.05, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
    ])
    assert connected_components(S, 0.1).tolist() == [0, 0, 0, 1, 2]  # 0-1-2 chained, 3 and 4 alone
    assert connected_components(S, 0.18).tolist() == [0, 0, 1, 2, 3]
    assert connected_components(S, 0.0).tolist() == [0] * 5


def test_best_cut_finds_the_planted_groups_and_agrees_with_sklearn() -> None:
    from sklearn.cluster import AgglomerativeClustering

    from analysis.clustering import best_cut, cut_height

    groups = [0, 0, 1, 2, 1, 0, 2, 1]
    D = adapter_distance(overlap_table(_planted(3, groups)), "subspace")
    model = Linkage("average").fit(D)
    k, scores = best_cut(D, model.linkage_)
    assert k == 3 and set(scores) == set(range(2, 8)) and scores[3] == max(scores.values())
    for k in (2, 3, 5):
        # a second route to the partition: scikit-learn's agglomeration on the same precomputed distances
        theirs = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit(D).labels_
        assert model.cut(k=k).tolist() == _renumber_list(theirs)
        assert model.cut(threshold=cut_height(model.linkage_, k)).tolist() == model.cut(k=k).tolist()
    assert best_cut(D[:2, :2], Linkage().fit(D[:2, :2]).linkage_)[0] == 1


def _renumber_list(labels) -> list[int]:
    seen: dict[int, int] = {}
    return [seen.setdefault(int(x), len(seen)) for x in labels]
