"""Chance levels of similarity samples: what a similarity must exceed to mean anything.

Pure statistics on arrays (no index, no adapters), shared by the family finder (`families`) and the neighbour
query's exact re-rank pool (`query.noise_level`), which is why they live apart from both.
"""
from __future__ import annotations

import numpy as np


def density_mode(x: np.ndarray) -> float:
    """The peak of a Gaussian-kernel density of the sample (bandwidth a quarter of its robust spread): the
    peak of the unrelated pairs even when a third of the pairs are related (they add an upper shoulder)."""
    x = np.asarray(x, dtype=np.float64)
    centre = float(np.median(x))
    h = 0.25 * 1.4826 * float(np.median(np.abs(x - centre))) or 1e-9
    lo, hi = np.quantile(x, [0.01, 0.99])
    counts, edges = np.histogram(x, bins=512, range=(lo - 3 * h, hi + 3 * h))
    step = edges[1] - edges[0]
    taps = np.arange(-int(4 * h / step) - 1, int(4 * h / step) + 2) * step
    smooth = np.convolve(counts, np.exp(-0.5 * (taps / h) ** 2), mode="same")
    peak = int(np.argmax(smooth))
    if 0 < peak < len(smooth) - 1:  # parabolic refinement between bins
        a, b, c = smooth[peak - 1:peak + 2]
        offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0
    else:
        offset = 0.0
    return float(edges[peak] + (0.5 + offset) * step)


def null_level(sims: np.ndarray) -> tuple[float, float]:
    """(centre, spread) of random-pair similarities: the mode, and 1.4826 x the median distance below it.

    Related pairs only ever raise similarities, so the lower side of the peak is chance alone."""
    centre = density_mode(sims)
    below = centre - sims[sims < centre]
    spread = float(1.4826 * np.median(below)) if len(below) else 0.0
    return centre, spread or 1e-12


def cross_level(sims: np.ndarray) -> tuple[float, float]:
    """(centre, spread) of pairs in different families: median, and the larger of the MAD and the spread
    below the median (a residual related pair can widen the upper side only)."""
    centre = float(np.median(sims))
    mad = float(np.median(np.abs(sims - centre)))
    below = centre - sims[sims < centre]
    return centre, 1.4826 * max(mad, float(np.median(below)) if len(below) else 0.0) or 1e-12


def tail_cut(sims: np.ndarray, centre: float, spread: float, z: float, q: float = 0.01) -> float:
    """The level centre + spread * z, widened where the chance sample's tail is heavier than a Gaussian's.

    Unrelated cosines are symmetric about their centre (flipping the sign of one update flips the cosine), and
    their lower side holds no related pairs, so it shows the tail's weight: where its q-quantile lies r times
    further below the centre than a Gaussian's would (few small modules: a cosine is a sum of few products of
    Gaussians), z is taken r times larger. Never below the Gaussian level."""
    from scipy.stats import norm

    sims = np.asarray(sims, dtype=np.float64)
    if len(sims) * q < 10 or spread <= 0:
        return centre + spread * z
    ratio = (centre - float(np.quantile(sims, q))) / (spread * float(norm.isf(q)))
    return centre + spread * z * max(1.0, ratio)
