"""Aggregated evidence (`gather`): weak families that the edge cut breaks into pieces come back whole, without
mixing two planted families; the vector route (sketches) and the pair route (exact cosines) agree."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from analysis.population import families as families_module
from analysis.population.families import _z, base_families, knn_graph
from analysis.population.gather import gather
from analysis.population.synthetic import PlantedSpec, family_of, member_factors

# 16 families of 25, 4 modules 12 x 12: unrelated cosines spread ~0.04, within-family cosines 0.1-0.15
SPEC = PlantedSpec(families=16, layers=2, d_out=12, d_in=12, core_rank=2, arm_rank=2, share=(0.1, 0.15),
                   sizes=(25,) * 16, seed=2)


@pytest.fixture(scope="module")
def exact_units() -> tuple[np.ndarray, np.ndarray]:
    """(unit rows of the flattened updates (n, 576): their dot products are the exact cosines, truth (n,))."""
    rows = [np.concatenate([(b @ a).ravel() for _, (b, a) in sorted(member_factors(SPEC, i)[2].items())])
            for i in range(SPEC.count)]
    x = np.asarray(rows)  # (n, 576)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), family_of(SPEC, np.arange(SPEC.count))


def test_weak_families_come_back_whole_and_pure(exact_units, monkeypatch) -> None:
    x, truth = exact_units
    labels, facts = base_families(x, k_sketch=32)
    monkeypatch.setattr(families_module, "gather", lambda labels, *a, **k: (labels, {}))
    cut_only, _ = base_families(x, k_sketch=32)
    assert adjusted_rand_score(truth, cut_only) < 0.7  # the edge cut alone: pieces and loners
    assert adjusted_rand_score(truth, labels) >= 0.95, facts
    assert facts["gathered"]["attached"] + facts["gathered"]["moved"] > 100
    for f in np.unique(labels):  # never two planted families merged (one stray adapter at most)
        counts = np.sort(np.bincount(truth[labels == f]))
        assert len(counts) == 1 or counts[-2] <= 1, counts


def test_vector_and_pair_routes_agree(exact_units) -> None:
    x, _ = exact_units
    nbr, sim = knn_graph(x, 15)
    start = np.arange(len(x))  # every adapter alone but the graph's mutual best pairs
    mutual = nbr[nbr[:, 0], 0] == np.arange(len(x))
    start[mutual] = np.minimum(np.arange(len(x)), nbr[:, 0])[mutual]

    def score(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.einsum("pd,pd->p", x[i].astype(np.float64), x[j].astype(np.float64))

    by_vectors, a = gather(start, nbr, score, vectors=x.astype(np.float64), z_of=_z, alpha=0.05,
                           rng=np.random.default_rng(0))
    by_pairs, b = gather(start, nbr, score, vectors=None, z_of=_z, alpha=0.05, rng=np.random.default_rng(0))
    assert a["rounds"] > 1 and a["attached"] > 0
    assert adjusted_rand_score(by_vectors, by_pairs) == 1.0, (a, b)
