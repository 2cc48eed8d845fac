"""Aggregated evidence: join groups whose *centroids* are related beyond chance (step 3b of `families`).

The graph cut tests one edge at a time, so a family whose members are each only 2-3 noise spreads apart
(within-family cosine 0.1 where unrelated pairs spread 0.04) falls apart into small pieces and adapters left
alone, although the family is plain when its members are taken together: the cosine of an adapter with the
unit centroid of m members of cohesion c is about c / sqrt(c + (1 - c) / m), which grows towards sqrt(c)
(0.33 for c = 0.11, 8 spreads) as the piece grows.

So, after the cut, for every pair of groups (family or lone adapter, at least one a family of >= 2) joined by
an edge of the neighbour graph, the centroid cosine

    T(A, B) = sum_{a in A, b in B} s(a, b) / (|S_A| |S_B|),   |S_A|^2 = sum_{a, a' in A} s(a, a')

(S_A: the sum of A's unit vectors; s: the sketch or exact cosine) is compared with its chance level, measured
per family on the cosines of random adapters outside it with its centroid (density mode and the spread below
it, `chance.null_level`: mostly unrelated adapters), at the level chance exceeds with probability
alpha / (every pair of groups with a family: the graph only chooses which to compute): the Gaussian quantile
or, where the pooled sample's lower tail is heavier, its exponential extrapolation (`chance.tail_cut`); a
family-family pair must pass the stricter of the two levels. Pairs beyond it are joined, strongest first: a lone
adapter joins one family (its best), a family merges with at most one other family per round (so no group ties
two others together in one step); centroids are recomputed and the test repeated until nothing joins. With sketches, S_A is a vector sum; with exact cosines the sums are
over pairs (all of them, or `pairs_cap` sampled where a product of sizes exceeds it).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from analysis.population.chance import null_level, tail_cut

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (P,) similarity of index pairs


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds)


class _Links:
    """Centroid cosines between groups: from vector sums (sketch) or from sampled pair sums (exact)."""

    def __init__(self, groups: list[np.ndarray], score: Score, vectors: np.ndarray | None,
                 rng: np.random.Generator, pairs_cap: int) -> None:
        self.groups, self.score, self.rng, self.cap = groups, score, rng, pairs_cap
        self.sums = None
        if vectors is not None:
            self.sums = np.stack([vectors[g].sum(axis=0, dtype=np.float64) for g in groups])  # (G, d)
            self.norms = np.linalg.norm(self.sums, axis=1)  # (G,)
        else:
            self.norms = np.sqrt(np.maximum([self._pair_sum(g, g) for g in groups], 1e-12))

    def _pair_sum(self, a: np.ndarray, b: np.ndarray) -> float:
        """sum_{i in a, j in b} s(i, j) (s(i, i) = 1), sampled above `cap` pairs."""
        same = a is b
        if len(a) * len(b) <= self.cap:
            i, j = np.repeat(a, len(b)), np.tile(b, len(a))
        else:
            i, j = self.rng.choice(a, self.cap), self.rng.choice(b, self.cap)
        s = self.score(i, j)
        if same:
            s = np.where(i == j, 1.0, s)
            if len(a) * len(b) > self.cap:  # the diagonal is known: estimate the off-diagonal mean only
                off = i != j
                mean = float(s[off].mean()) if off.any() else 0.0
                return len(a) + len(a) * (len(a) - 1) * mean
        return float(s.sum()) * (len(a) * len(b) / len(s))

    def to_adapters(self, x: np.ndarray, y: np.ndarray, vectors: np.ndarray | None) -> np.ndarray:
        """(P,) cosine of adapter y[p] with the centroid of group x[p] (y outside it)."""
        if self.sums is not None:
            dots = np.einsum("pd,pd->p", self.sums[x], vectors[y])
        else:
            dots = np.asarray([self._pair_sum(self.groups[a], np.asarray([b])) for a, b in zip(x, y)])
        return dots / self.norms[x]

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(P,) T for group index pairs x, y."""
        if self.sums is not None:
            dots = np.einsum("pd,pd->p", self.sums[x], self.sums[y])
        else:
            dots = np.asarray([self._pair_sum(self.groups[a], self.groups[b]) for a, b in zip(x, y)])
        return dots / (self.norms[x] * self.norms[y])


def _join(pairs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(G,) root group of every group after joining `pairs` (G', 2) in order, with the rules of one round."""
    root = np.arange(len(sizes))
    lone_done = np.zeros(len(sizes), dtype=bool)  # a lone adapter that joined this round
    family_done = np.zeros(len(sizes), dtype=bool)  # a family that merged with another family this round

    def find(g: int) -> int:
        while root[g] != g:
            g = root[g]
        return g

    for g, h in pairs:
        if sizes[g] == 1 and sizes[h] == 1:
            continue
        if sizes[g] > 1 and sizes[h] > 1:
            if family_done[g] or family_done[h]:
                continue
            family_done[g] = family_done[h] = True
        else:
            lone = g if sizes[g] == 1 else h
            if lone_done[lone]:
                continue
            lone_done[lone] = True
        root[find(h)] = find(g)
    return np.asarray([find(g) for g in range(len(sizes))])


def _chance_cuts(links: _Links, labels: np.ndarray, families: np.ndarray, vectors: np.ndarray | None,
                 rng: np.random.Generator, z: float, p: float, per_family: int) -> np.ndarray:
    """(G,) the level a link to a family must pass (-inf for lone adapters: they are tested through families).

    Per family: the cosines of `per_family` random adapters outside it with its centroid give its centre and
    spread (a small family's centroid keeps more sketch noise than a large one's, so one pooled spread would
    be too lenient for small families); the tail's shape (Gaussian, or heavier) from all of them pooled."""
    x = np.repeat(families, per_family)
    y = rng.integers(0, len(labels), len(x))
    keep = labels[y] != x
    null = links.to_adapters(x[keep], y[keep], vectors)
    centre = np.zeros(len(links.groups))
    spread = np.ones(len(links.groups))
    for f in families:
        centre[f], spread[f] = null_level(null[x[keep] == f])
    standard = (null - centre[x[keep]]) / spread[x[keep]]
    z_eff = tail_cut(standard, 0.0, 1.0, z, p)  # >= z
    level = np.full(len(links.groups), -np.inf)
    level[families] = centre[families] + spread[families] * z_eff
    return level


def gather(labels: np.ndarray, nbr: np.ndarray, score: Score, *, vectors: np.ndarray | None, z_of: Callable,
           alpha: float, rng: np.random.Generator, null_per_family: int = 128, pairs_cap: int = 4096,
           rounds: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """(labels, facts): groups joined while a graph-linked pair's centroid cosine is beyond chance.

    `vectors`: unit sketch rows (sums taken directly), or None to use `score` over pairs (exact cosines).
    """
    facts: dict[str, Any] = {"joined": 0, "rounds": 0}
    n = len(labels)
    rows = np.repeat(np.arange(n), nbr.shape[1])
    cols = nbr.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    for _ in range(rounds):
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.ravel()
        groups = _groups(labels)
        sizes = np.bincount(labels)
        # candidate pairs: groups joined by a graph edge, at least one a family (lone pairs are the cut's)
        a, b = labels[rows], labels[cols]
        cand = (a != b) & ((sizes[a] > 1) | (sizes[b] > 1))
        if not cand.any():
            break
        pairs = np.unique(np.sort(np.stack([a[cand], b[cand]], 1), axis=1), axis=0)  # (P, 2)
        families = np.flatnonzero(sizes > 1)
        links = _Links(groups, score, vectors, rng, pairs_cap)
        # the graph only picks which pairs to compute; any (family, group) pair could have been the one joined,
        # so the multiple-test count is all of them, not the few computed
        tests = len(families) * (len(groups) - 1) - len(families) * (len(families) - 1) // 2
        p = alpha / max(tests, 1)
        level = _chance_cuts(links, labels, families, vectors, rng, z_of(p), p, null_per_family)
        cut = np.maximum(level[pairs[:, 0]], level[pairs[:, 1]])  # (P,) the stricter family's level
        t = links(pairs[:, 0], pairs[:, 1])
        above = np.flatnonzero(t > cut)
        facts["rounds"] += 1
        facts["median_cut"] = round(float(np.median(level[families])), 4)
        log.debug("gather round %d: %d pairs, %d beyond their level", facts["rounds"], len(pairs), len(above))
        if len(above) == 0:
            break
        # strongest first: a lone adapter joins one family (its best), a family merges with one other family
        # per round; so no group ties two others together in one step
        merged = _join(pairs[above[np.argsort(-t[above], kind="stable")]], sizes)
        facts["joined"] += int(len(groups) - len(np.unique(merged)))
        labels = merged[labels]
    return labels, facts
