"""Paired contrasts between consolidation arms: a mean difference and its 95% bootstrap interval.

The unit is one (task, seed) cell: every arm is measured on the same tasks with the same seeds and, per seed,
the same batch sequence, so arm A and arm B are compared cell by cell (paired differences d[t, s]). Cells of
one task are not independent (same eval rows, same adapter), so the interval comes from a two-level (cluster)
bootstrap: resample tasks with replacement, then seeds with replacement within each drawn task, and take the
mean of the drawn cells; the percentile interval of those means is reported (Efron & Tibshirani 1993, ch. 13;
the two-stage resampling of Davison & Hinkley 1997, sec. 3.8). With one seed it is the ordinary bootstrap
over tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 10_000


@dataclass(frozen=True)
class Contrast:
    """Mean paired difference (A - B) over tasks x seeds and its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    tasks: int
    seeds: int
    level: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": round(self.mean, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "tasks": self.tasks, "seeds": self.seeds, "level": self.level}


def bootstrap_means(diff: np.ndarray, *, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray:
    """Means of `draws` two-level resamples of `diff` (tasks, seeds): tasks first, then seeds within each."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"paired differences must be a finite (tasks, seeds) array, got shape {d.shape}")
    n_tasks, n_seeds = d.shape
    rng = np.random.default_rng(seed)
    t = rng.integers(0, n_tasks, size=(draws, n_tasks))  # (draws, n_tasks) drawn tasks
    s = rng.integers(0, n_seeds, size=(draws, n_tasks, n_seeds))  # (draws, n_tasks, n_seeds) seeds per task
    return d[t[:, :, None], s].mean(axis=(1, 2))  # (draws,)


def paired_contrast(a: np.ndarray, b: np.ndarray, *, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
                    seed: int = 0) -> Contrast:
    """A - B on paired (tasks, seeds) arrays of one metric: the mean and its `level` percentile interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    d = a - b  # (tasks, seeds)
    means = bootstrap_means(d, draws=draws, seed=seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Contrast(float(d.mean()), float(low), float(high), d.shape[0], d.shape[1], level)
