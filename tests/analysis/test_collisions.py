"""Ranked collisions and the random-subspace baseline: the closed form r/d against random factors, and the
ranking against a brute-force sort of every (module, pair) cell."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.adapters.model import LowRankDelta
from analysis.collisions import random_expectation, ranked_collisions, ranked_pairs
from analysis.overlap import module_overlap


def _random(n: int, d_out: int, d_in: int, r: int, seed: int) -> list[LowRankDelta]:
    g = torch.Generator().manual_seed(seed)
    return [LowRankDelta(A=torch.randn(r, d_in, generator=g, dtype=torch.float64),
                         B=torch.randn(d_out, r, generator=g, dtype=torch.float64), scale=1.0) for _ in range(n)]


@pytest.mark.parametrize("r,d", [(4, 64), (8, 48)])
def test_random_subspaces_give_r_over_d(r: int, d: int) -> None:
    """phi at full rank of random rank-r updates averages r/d (the closed form the pages print)."""
    m = module_overlap(_random(24, d, 2 * d, r, seed=r), [f"a{k}" for k in range(24)], "m")
    off = m.subspace_similarity[~np.eye(24, dtype=bool)]  # 552 random pairs
    assert random_expectation(m, "subspace_similarity", 0, 1) == r / d
    assert off.mean() == pytest.approx(r / d, rel=0.1)
    inp = m.input_subspace_similarity[~np.eye(24, dtype=bool)]
    assert inp.mean() == pytest.approx(random_expectation(m, "input_subspace_similarity", 0, 1), rel=0.1)
    energy = m.energy_overlap[~np.eye(24, dtype=bool)]
    assert energy.mean() == pytest.approx(random_expectation(m, "energy_overlap", 0, 1), rel=0.1)


def test_ranking_matches_a_brute_force_sort() -> None:
    deltas = _random(4, 32, 32, 3, seed=1)
    shared = deltas[0]
    table = {f"layers.{k}.q_proj": module_overlap(
        [shared, LowRankDelta(A=shared.A + 0.1 * k * torch.randn_like(shared.A), B=shared.B, scale=1.0), *deltas[2:]],
        ["a", "b", "c", "d"], f"layers.{k}.q_proj") for k in range(3)}
    for metric in ("subspace_similarity", "cosine", "mean_angle_deg"):
        got = ranked_collisions(table, metric, top=5)
        cells = [(m, i, j, float(getattr(t, metric)[i, j])) for m, t in table.items()
                 for i in range(4) for j in range(i + 1, 4)]
        sign = {"mean_angle_deg": 1.0}.get(metric, -1.0)
        cells.sort(key=lambda c: sign * (abs(c[3]) if metric == "cosine" else c[3]))
        assert [(c.module, c.i, c.j) for c in got] == [c[:3] for c in cells[:5]]
        assert (got[0].a, got[0].b) == ("a", "b")  # the near-copies collide most, whatever the metric
    pairs = ranked_pairs(table, "subspace_similarity")
    assert len(pairs) == 6 and (pairs[0].a, pairs[0].b) == ("a", "b")
    assert len(ranked_pairs(table, "energy_overlap")) == 12  # asymmetric: both directions
