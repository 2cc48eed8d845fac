"""Aggregated evidence: adapters join the family whose *centroid* they fit beyond chance (step 3b of `families`).

The graph cut tests one edge at a time, so a family whose members are each only 2-3 noise spreads apart
(within-family cosine 0.1 where unrelated pairs spread 0.04) falls apart into small pieces and adapters left
alone, although the family is plain when its members are taken together: the cosine of an adapter with the
unit centroid of m members of cohesion c is about c / sqrt(c + (1 - c) / m), which grows towards sqrt(c)
(0.33 for c = 0.11: 8 spreads) as the family grows.

So, after the cut, every adapter is compared with the centroids of the families (groups of >= 2) that its
graph neighbours belong to, and of its own family (leaving itself out):

    T(i, F) = sum_{j in F, j != i} s(i, j) / |S_F - u_i|,   |S_F|^2 = sum_{j, j' in F} s(j, j')

(S_F: the sum of F's unit vectors; s: the sketch cosine, or the exact cosine over pairs). Chance is measured
per family, on the cosines with its centroid of one random adapter from each of (up to 512) other groups
(density mode and the spread below it, `chance.null_level`; a small family's centroid keeps more sketch noise
than a large one's); the level is the one chance exceeds with probability alpha / (adapters x families: the graph only chooses which pairs to
compute, any could have been the one chosen): the Gaussian quantile, widened where the pooled lower tail is
heavier than a Gaussian's (`chance.tail_cut`); a family's centre is never taken below 0 (the expected
cosine of unrelated updates), its spread never below the pooled one nor below the spread of one pair (a tight
family's centroid is as noisy as one of its members). An adapter goes to the family whose centroid it fits
best (largest T) when it passes the level there; a lone adapter that passes nowhere stays alone, and a
member never leaves its family but for a better one. Centroids are recomputed and the step repeated until no
adapter moves: pieces of one family flow into its largest piece, while two distinct families never merge
wholesale (each member keeps choosing the centroid it fits best).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from analysis.population.chance import null_level, tail_cut

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (P,) similarity of index pairs


class _Centroids:
    """Sums of the unit vectors of each family: as vectors (sketch) or through pair similarities (exact)."""

    def __init__(self, members: list[np.ndarray], score: Score, vectors: np.ndarray | None,
                 rng: np.random.Generator, cap: int) -> None:
        self.members, self.score, self.vectors, self.rng, self.cap = members, score, vectors, rng, cap
        if vectors is not None:
            self.sums = np.stack([vectors[m].sum(axis=0, dtype=np.float64) for m in members])  # (F, d)
            self.sq = np.einsum("fd,fd->f", self.sums, self.sums)  # (F,) |S_F|^2
        else:
            self.sq = np.asarray([self._within(m) for m in members])

    def _sample(self, m: np.ndarray) -> tuple[np.ndarray, float]:
        """Members to sum over (all, or `cap` sampled) and the factor that scales their sum to all of them."""
        if len(m) <= self.cap:
            return m, 1.0
        return self.rng.choice(m, self.cap, replace=False), len(m) / self.cap

    def _within(self, m: np.ndarray) -> float:
        a, _ = self._sample(m)
        i, j = np.repeat(a, len(a)), np.tile(a, len(a))
        off = i != j
        mean = float(self.score(i[off], j[off]).mean()) if off.any() else 0.0
        return len(m) + len(m) * (len(m) - 1) * mean

    def dots(self, i: np.ndarray, f: np.ndarray) -> np.ndarray:
        """(P,) sum_{j in F_f} s(i, j) with s(i, i) = 1, for adapter/family index pairs."""
        if self.vectors is not None:
            return np.einsum("pd,pd->p", self.vectors[i], self.sums[f])
        parts = [self._sample(self.members[g]) for g in f]
        lengths = np.asarray([len(p[0]) for p in parts])
        left = np.repeat(i, lengths)
        right = np.concatenate([p[0] for p in parts])
        s = np.where(left == right, 1.0, self.score(left, right))
        sums = np.add.reduceat(s, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        return sums * np.asarray([p[1] for p in parts])

    def fit(self, i: np.ndarray, f: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """(P,) T(i, F): cosine of adapter i with F's unit centroid, i left out where `inside`."""
        d = self.dots(i, f)
        sq = self.sq[f] - np.where(inside, 2.0 * d - 1.0, 0.0)
        return (d - inside) / np.sqrt(np.maximum(sq, 1e-12))


def _levels(cent: _Centroids, groups: list[np.ndarray], family_of_group: np.ndarray, rng: np.random.Generator,
            z: float, per_family: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(centre (F,), spread (F,)) of chance per family, and z_eff (>= z) in `spread`s for probability p.

    The sample: one random adapter from each of up to `per_family` other groups (members of one family are
    near copies of each other; drawn many times they would make a spike the mode would settle on)."""
    n_fam = len(cent.members)
    picks = np.asarray([g[rng.integers(len(g))] for g in groups])  # (G,) one adapter per group
    others = np.flatnonzero(family_of_group >= 0)
    f_parts, y_parts = [], []
    for fam, g in enumerate(others):
        choose = np.delete(np.arange(len(groups)), g)
        if len(choose) > per_family:
            choose = rng.choice(choose, per_family, replace=False)
        f_parts.append(np.full(len(choose), fam))
        y_parts.append(picks[choose])
    f, y = np.concatenate(f_parts), np.concatenate(y_parts)
    null = cent.fit(y, f, np.zeros(len(f), dtype=bool))
    _, pooled = null_level(null)
    centre, spread = np.zeros(n_fam), np.ones(n_fam)
    for g in range(n_fam):
        centre[g], spread[g] = null_level(null[f == g])
    z_eff = tail_cut((null - centre[f]) / spread[f], 0.0, 1.0, z)  # the tail's weight, in each family's units
    spread = np.maximum(spread, max(pooled, floor))  # never more lenient than all families pooled or than a pair
    centre = np.maximum(centre, 0.0)  # unrelated updates have expected cosine 0: a lower mode is sampling noise
    return np.stack([centre, spread]), np.asarray(z_eff)


def gather(labels: np.ndarray, nbr: np.ndarray, score: Score, *, vectors: np.ndarray | None, z_of: Callable,
           alpha: float, rng: np.random.Generator, floor: float = 0.0, per_family: int = 512, cap: int = 512,
           rounds: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """(labels, facts): adapters moved to the family whose centroid they fit beyond chance, until none moves.

    `vectors`: unit sketch rows (centroids as vector sums), or None to use `score` over pairs (exact cosines;
    families beyond `cap` members are summed over `cap` sampled ones). `floor`: the chance spread of one pair,
    below which no family's spread is taken (for unrelated isotropic updates the centroid cosine spreads as a
    pair does; sketch noise averages a little in a centroid, so this errs on the strict side).
    """
    n = len(labels)
    facts: dict[str, Any] = {"attached": 0, "moved": 0, "rounds": 0}
    rows = np.repeat(np.arange(n), nbr.shape[1])
    valid = nbr.ravel() >= 0
    rows, cols = rows[valid], nbr.ravel()[valid]
    for _ in range(rounds):
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.ravel()
        sizes = np.bincount(labels)
        fam_groups = np.flatnonzero(sizes > 1)
        if len(fam_groups) == 0:
            break
        family_of_group = np.full(len(sizes), -1)
        family_of_group[fam_groups] = np.arange(len(fam_groups))
        order = np.argsort(labels, kind="stable")
        members = np.split(order, np.cumsum(sizes)[:-1])
        cent = _Centroids([members[g] for g in fam_groups], score, vectors, rng, cap)
        p = alpha / (n * len(fam_groups))
        (centre, spread), z_eff = _levels(cent, members, family_of_group, rng, z_of(p), per_family, floor)
        # candidates: the families of each adapter's graph neighbours, and its own
        own = family_of_group[labels]
        cand_i = np.concatenate([rows, np.flatnonzero(own >= 0)])
        cand_f = np.concatenate([family_of_group[labels[cols]], own[own >= 0]])
        ok = cand_f >= 0
        pairs = np.unique(np.stack([cand_i[ok], cand_f[ok]], 1), axis=0)  # (P, 2) adapter, family
        i, f = pairs[:, 0], pairs[:, 1]
        fit = cent.fit(i, f, own[i] == f)
        passes = fit > centre[f] + spread[f] * z_eff
        # each adapter: the centroid it fits best, if that one passes; members without one stay where they are
        top = np.lexsort((-fit, i))  # by adapter, best fit first
        first = top[np.r_[True, i[top][1:] != i[top][:-1]]]
        good = first[passes[first]]
        best = np.full(n, -1)
        best[i[good]] = f[good]
        move = (best >= 0) & (best != own)
        facts["rounds"] += 1
        facts["level_spreads"] = round(float(z_eff), 2)
        if not move.any():
            break
        facts["attached"] += int((move & (own < 0)).sum())
        facts["moved"] += int((move & (own >= 0)).sum())
        labels = labels.copy()
        labels[move] = fam_groups[best[move]]
        log.debug("gather round %d: %d adapters moved", facts["rounds"], int(move.sum()))
    return labels, facts
