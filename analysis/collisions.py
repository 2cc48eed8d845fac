"""Where adapters collide most, per metric, and what a number would be by chance.

The pair that collides most depends on the metric: subspace similarity asks whether two updates write into
the same directions, cosine whether they write the same thing, energy overlap how much of one lies in the
other's column space. `ranked_collisions` lists the top (module, pair) cells of one metric with the value
random subspaces of the same ranks would give (`random_expectation`), so a reader sees both the ranking and
whether a value is structure or chance:

- subspace similarity phi at full ranks: for random r_i- and r_j-dimensional subspaces of R^d,
  E ||U_i^T U_j||_F^2 = r_i r_j / d, so E phi = r_i r_j / (d min(r_i, r_j)) = max(r_i, r_j) / d (r / d for equal
  ranks); d is the output width (input width for the input-space variant);
- energy overlap of i in j: a random r_j-dimensional subspace holds r_j / d of any vector's energy;
- cosine: 0 (random updates are orthogonal in expectation); mean principal angle: close to 90 degrees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from analysis.errors import AtlasError
from analysis.overlap import METRICS, ModuleOverlap, aggregate

HIGHER_COLLIDES = {"cosine": True, "subspace_similarity": True, "input_subspace_similarity": True,
                   "energy_overlap": True, "mean_angle_deg": False}


@dataclass(frozen=True)
class Collision:
    """One (module, pair) cell: adapters i and j at `module` (None: aggregated over every module)."""

    module: str | None
    i: int
    j: int
    a: str
    b: str
    value: float
    random: float | None  # what random subspaces of the same ranks give (None: no closed form used)


def random_expectation(m: ModuleOverlap, metric: str, i: int, j: int) -> float | None:
    """The metric's value for random subspaces of the ranks adapters i and j have at this module."""
    r_i, r_j = m.ranks[i], m.ranks[j]
    n_out, n_in = m.shape
    if min(r_i, r_j) == 0:
        return 0.0 if metric != "mean_angle_deg" else 90.0
    if metric == "subspace_similarity":
        return max(r_i, r_j) / n_out
    if metric == "input_subspace_similarity":
        return max(r_i, r_j) / n_in
    if metric == "energy_overlap":
        return min(r_j / n_out, 1.0)
    if metric == "cosine":
        return 0.0
    return None


def _key(metric: str, value: float) -> float:
    return -abs(value) if metric == "cosine" else (-value if HIGHER_COLLIDES[metric] else value)


def ranked_collisions(table: Mapping[str, ModuleOverlap], metric: str, top: int = 10) -> list[Collision]:
    """The `top` (module, pair) cells where adapters collide most by `metric` (cosine: by |cosine|), i < j
    (energy overlap, which is asymmetric: both directions), most colliding first; ties in module order."""
    if metric not in METRICS:
        raise AtlasError(f"unknown overlap metric {metric!r}; choose one of {', '.join(METRICS)}")
    cells: list[Collision] = []
    for name, m in table.items():
        values = np.asarray(getattr(m, metric), dtype=float)  # (N, N)
        n = values.shape[0]
        for i in range(n):
            for j in range(n):
                if i == j or (j < i and metric != "energy_overlap"):
                    continue
                cells.append(Collision(name, i, j, m.adapters[i], m.adapters[j], float(values[i, j]),
                                       random_expectation(m, metric, i, j)))
    cells.sort(key=lambda c: _key(metric, c.value))  # stable: model order within ties
    return cells[:top]


def ranked_pairs(table: Mapping[str, ModuleOverlap], metric: str) -> list[Collision]:
    """Every pair, aggregated over modules (`analysis.overlap.aggregate`), most colliding first."""
    matrix = np.asarray(aggregate(dict(table), metric), dtype=float)  # (N, N)
    names = next(iter(table.values())).adapters
    n = len(names)
    pairs = [Collision(None, i, j, names[i], names[j], float(matrix[i, j]), None)
             for i in range(n) for j in range(n) if i != j and (i < j or metric == "energy_overlap")]
    return sorted(pairs, key=lambda c: _key(metric, c.value))
