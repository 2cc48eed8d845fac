"""Families of a population: every adapter, every base separately, a cut the data sets.

1. Neighbour graph. Each distinct content of a base is linked to its K nearest others by sketch cosine (the
   base's approximate index when it has one or the base is large, brute force otherwise; float32 re-rank);
   K <= (n - 1) / 3, so that in a small base being mutual neighbours still means something.
2. Noise level. The sketch cosines of random pairs are mostly pairs of unrelated adapters: their mode m and
   the robust spread s of the values below it (related pairs only add an upper shoulder) measure what
   unrelated adapters look like *in this index* (the sketch error depends on k, on the ranks and on the module
   shapes, so it is measured, not assumed). Once families are cut, the level is measured again on the random
   pairs that fall in different families (median and MAD), and the cut redone, until it no longer changes.
3. The cut. An edge is kept when its similarity is above what chance gives over the whole graph:
   tau = max(m, 0) + s * z, z = the Gaussian quantile of 1 - alpha / (n K) (alpha = 0.05: under a Gaussian
   null, fewer than 0.05 false edges expected among the n K tested; a centre below 0, seen when a few large
   families anti-correlate, is never taken as the level of unrelated adapters, whose expected cosine is 0).
   Only mutual edges count (j among i's K nearest and i among j's): a chance edge rarely is. Families are the connected components of the
   kept edges; a family of one is an adapter with no neighbour above chance. `--families K` instead cuts the
   maximum spanning forest of the graph into K parts (single linkage), `threshold` sets tau by hand.
4. Cohesion: per family, the mean pairwise sketch cosine, (|sum u|^2 - n) / (n (n - 1)) over its unit vectors.
5. Resolution. Adapters left alone whose K best similarities are, on average, above what chance gives
   (the 99.9th percentile of the mean of the K largest of n - 1 null draws) show a signal the sketch error
   hides; with more than 5% of a base in that state the result says so, with the k that would separate them (error ~ 1 / sqrt(k): k' = k (tau - m)^2 /
   (b - m)^2 for the median mean b of their K best similarities), and `exact=True` re-ranks the graph's candidates and the
   random pairs by the exact factored cosine (`exact.StackedFactors`) instead.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.errors import AtlasError
from analysis.population.ann import FLAT_MAX, AnnIndex, sha_ids
from analysis.population.chance import cross_level, null_level
from analysis.population.gather import gather
from analysis.population.query import Population

log = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 15
DEFAULT_SAMPLE = 2000  # adapters whose random pairs measure the noise level
ALPHA = 0.05
PAIRS_PER_ADAPTER = 32


@dataclass(frozen=True, eq=False)
class Families:
    """labels (N,) in population order (0 = largest family); per family its size, cohesion and base."""

    labels: np.ndarray
    sizes: list[int]
    cohesion: list[float | None]  # mean pairwise sketch (or exact) cosine; None for a family of one
    base: list[int]  # index into Population.bases
    method: str
    per_base: list[dict[str, Any]] = field(default_factory=list)  # noise, cut, families, unresolved, suggested_k
    warnings: list[str] = field(default_factory=list)
    sample: int = 0


def _z(p_upper: float) -> float:
    from scipy.stats import norm

    return float(norm.isf(p_upper))


def null_top_mean(n: int, k: int, q: float = 0.999, reps: int = 4000, seed: int = 0) -> float:
    """The q-quantile of the mean of the k largest of n standard normals (chance's best k neighbours).

    Exact in distribution without drawing n values: the top-k uniforms of n are 1 - Gamma_j / (n + 1)
    (Gamma_j: partial sums of unit exponentials; Renyi), mapped through the Gaussian quantile."""
    from scipy.stats import norm

    gaps = np.random.default_rng(seed).exponential(size=(reps, k)).cumsum(axis=1)  # (reps, k)
    tops = norm.isf(np.minimum(gaps / (n + 1), 0.5))  # (reps, k) descending
    return float(np.quantile(tops.mean(axis=1), q))


# ---- 1. the neighbour graph --------------------------------------------------------------------------

def knn_graph(vectors: np.ndarray, k: int, *, index: AnnIndex | None = None, ids: np.ndarray | None = None,
              pool: int | None = None, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours (n, k) int, sims (n, k) float32) of unit rows, self excluded, best first; -1 pads.

    `index` holds the rows under `ids` (n,) (default: their positions); without one, brute force up to
    FLAT_MAX rows and an in-memory IVF index beyond.
    """
    n = len(vectors)
    k = min(k, n - 1)
    nbr = np.full((n, max(k, 0)), -1, dtype=np.int64)
    sim = np.full((n, max(k, 0)), -np.inf, dtype=np.float32)
    if k <= 0:
        return nbr, sim
    if index is None and n > FLAT_MAX:
        index, ids = AnnIndex.build(vectors, np.arange(n, dtype=np.int64)), None
    if ids is not None:
        sorter = np.argsort(ids)
        sorted_ids = ids[sorter]
    for s in range(0, n, block):
        q = vectors[s:s + block]  # (b, d)
        if index is None:
            cand_sim = q @ vectors.T  # (b, n)
            cand_sim[np.arange(len(q)), np.arange(s, s + len(q))] = -np.inf
            cand = np.argpartition(-cand_sim, k - 1, axis=1)[:, :k]  # (b, k)
        else:
            _, cand = index.search(q, pool or max(3 * k, k + 16))  # (b, C) ids
            if ids is not None:  # content ids -> positions (an id the rows lack counts as self: dropped)
                at = np.clip(np.searchsorted(sorted_ids, cand), 0, n - 1)
                cand = np.where(sorted_ids[at] == cand, sorter[at], -1)
            cand = np.where(cand < 0, np.arange(s, s + len(q))[:, None], cand)
        exact = np.einsum("bd,bcd->bc", q, vectors[cand])  # (b, C) float32 re-rank
        exact[cand == np.arange(s, s + len(q))[:, None]] = -np.inf
        order = np.argsort(-exact, axis=1)[:, :k]
        nbr[s:s + len(q)] = np.take_along_axis(cand, order, 1)
        sim[s:s + len(q)] = np.take_along_axis(exact, order, 1)
    nbr[~np.isfinite(sim)] = -1
    return nbr, sim


# ---- 2.-5. one base ------------------------------------------------------------------------------------

def _random_pairs(n: int, sample: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    i = np.repeat(rng.choice(n, size=min(n, sample), replace=False), PAIRS_PER_ADAPTER)
    j = (i + rng.integers(1, n, size=len(i))) % n  # never i itself
    return i, j


def _components(n: int, nbr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.repeat(np.arange(n), nbr.shape[1])[keep.ravel()]
    graph = coo_matrix((np.ones(len(rows)), (rows, nbr.ravel()[keep.ravel()])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _mutual(nbr: np.ndarray) -> np.ndarray:
    """(n, K) bool: j = nbr[i, c] also lists i among its K nearest (a chance edge rarely is mutual)."""
    n, k = nbr.shape
    rows = np.repeat(np.arange(n), k)
    cols = nbr.ravel()
    ok = cols >= 0
    forward = rows[ok] * n + cols[ok]  # edge codes i -> j
    backward = np.sort(cols[ok] * n + rows[ok])  # j -> i exists when j lists i
    at = np.clip(np.searchsorted(backward, forward), 0, len(backward) - 1)
    out = np.zeros(n * k, dtype=bool)
    out[np.flatnonzero(ok)] = backward[at] == forward
    return out.reshape(n, k)


def _spanning_cut(n: int, nbr: np.ndarray, sim: np.ndarray, parts: int) -> np.ndarray:
    """Single linkage on the graph: drop the weakest edges of the maximum spanning forest until `parts`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    ok = nbr >= 0
    rows = np.repeat(np.arange(n), nbr.shape[1])[ok.ravel()]
    w = 2.0 - sim[ok].astype(np.float64)  # > 0: the largest similarity is the smallest weight
    forest = minimum_spanning_tree(coo_matrix((w, (rows, nbr[ok])), shape=(n, n))).tocoo()
    order = np.argsort(-forest.data)  # weakest first
    keep = np.ones(len(order), dtype=bool)
    keep[order[:max(0, parts - (n - len(order)))]] = False
    graph = coo_matrix((np.ones(int(keep.sum())), (forest.row[keep], forest.col[keep])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _cohesion(unit: np.ndarray) -> float | None:
    n = len(unit)
    if n < 2:
        return None
    total = unit.sum(axis=0, dtype=np.float64)  # (d,)
    return float((total @ total - (unit.astype(np.float64) ** 2).sum()) / (n * (n - 1)))


@dataclass
class _Scorer:
    """Similarity of index pairs of one base's contents: sketch cosine, or exact cosine when `exact` is set."""

    vectors: np.ndarray
    exact: Any = None

    def __call__(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        if self.exact is not None:
            return self.exact.cosine(i, j)
        return np.einsum("pd,pd->p", self.vectors[i], self.vectors[j])


def base_families(vectors: np.ndarray, *, k_sketch: int, neighbours: int = DEFAULT_NEIGHBOURS,
                  sample: int = DEFAULT_SAMPLE, n_families: int | None = None, threshold: float | None = None,
                  index: AnnIndex | None = None, ids: np.ndarray | None = None, exact: Any = None,
                  seed: int = 0) -> tuple[np.ndarray, dict]:
    """(labels (n,), facts) for the distinct contents of one base (unit rows `vectors`)."""
    n = len(vectors)
    if n == 1:
        return np.zeros(1, dtype=np.int64), {"adapters": 1, "noise": None, "cut": None, "unresolved": 0}
    rng = np.random.default_rng(seed)
    score = _Scorer(vectors, exact)
    neighbours = max(1, min(neighbours, (n - 1) // 3))  # a graph sparser than the population: mutual means something
    # 1. the graph (exact: more sketch candidates, re-ranked by the exact cosine)
    if exact is None:
        nbr, sim = knn_graph(vectors, neighbours, index=index, ids=ids)
    else:
        wide, _ = knn_graph(vectors, 4 * neighbours, index=index, ids=ids)
        ok = wide >= 0
        full = np.full(wide.shape, -np.inf)
        full[ok] = score(np.repeat(np.arange(n), wide.shape[1])[ok.ravel()], wide[ok])
        order = np.argsort(-full, axis=1)[:, :min(neighbours, n - 1)]
        nbr, sim = np.take_along_axis(wide, order, 1), np.take_along_axis(full, order, 1)
    # 2. noise from random pairs
    i, j = _random_pairs(n, sample, rng)
    null = score(i, j)
    centre, spread = null_level(null)
    # 3. the cut; then the chance level again from the pairs the families found are *not* related, twice
    z = _z(ALPHA / (n * nbr.shape[1]))
    valid = nbr >= 0
    mutual = _mutual(nbr)
    labels = None
    for _ in range(3):
        cut = max(centre, 0.0) + spread * z if threshold is None else 1.0 - threshold
        if n_families is not None:
            new = _spanning_cut(n, nbr, sim, n_families)
        else:
            new = _components(n, nbr, valid & (sim >= cut) & mutual)
        if labels is not None and np.array_equal(new, labels) or threshold is not None or n_families is not None:
            labels = new
            break
        labels = new
        cross = null[labels[i] != labels[j]]
        if len(cross) < 100:
            break
        centre, spread = cross_level(cross)
    # 3b. aggregated evidence: groups whose centroids are related beyond chance are one family (`gather`)
    gathered: dict[str, Any] = {}
    if threshold is None and n_families is None:
        labels, gathered = gather(labels, nbr, score, vectors=vectors if exact is None else None, z_of=_z,
                                  alpha=ALPHA, rng=rng, floor=spread)
    # 5. resolution: adapters left alone whose K best are, together, beyond what chance gives (p < 0.001)
    counts = np.bincount(labels)
    alone = counts[labels] == 1
    kk = nbr.shape[1]
    top_mean = np.where(valid, sim, centre).mean(axis=1)  # (n,)
    chance = centre + spread * null_top_mean(n - 1, kk)
    hidden = alone & (top_mean > chance)
    facts: dict[str, Any] = {"adapters": n, "noise": round(spread, 4), "centre": round(centre, 4),
                             "cut": round(float(cut), 4), "unresolved": int(hidden.sum()), "gathered": gathered}
    if hidden.sum() > 0.05 * n and exact is None:
        b = float(np.median(top_mean[hidden]))
        facts["suggested_k"] = int(8 * math.ceil(k_sketch * ((cut - centre) / max(b - centre, 1e-9)) ** 2 / 8))
        facts["best_unresolved"] = round(b, 4)
    return labels, facts


def families(pop: Population, *, n_families: int | None = None, threshold: float | None = None,
             sample: int = DEFAULT_SAMPLE, neighbours: int = DEFAULT_NEIGHBOURS, exact: bool = False,
             seed: int = 0) -> Families:
    """Families of every adapter, base by base (module docstring); copies of one content share a family."""
    if len(pop) == 0:
        raise AtlasError(f"{pop.root}: the index holds no sketched adapter")
    if n_families is not None and not 1 <= n_families <= len(pop):
        raise AtlasError(f"families: need 1 <= K <= {len(pop)} (adapters in the index), got {n_families}")
    if n_families is not None and len(pop.bases) > 1:
        raise AtlasError(f"{pop.root}: --families K cuts one base, and this index holds {len(pop.bases)} (families "
                         "never mix bases); drop --families to let each base set its own cut")
    labels = np.full(len(pop), -1, dtype=np.int64)
    per_base, warnings, next_label = [], [], 0
    for b, base in enumerate(pop.bases):
        rows = pop.members(b)
        if len(rows) == 0:
            continue
        ids = sha_ids([pop.sha256[r] for r in rows])
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        reps = rows[first]  # one position per distinct content
        index = pop.ann.get(base["key"])
        index = index if index is not None and index.kind == "ivf" else None
        stacked = _exact_factors(pop, reps) if exact else None
        lab, facts = base_families(pop.vectors[reps], k_sketch=pop.config.k, neighbours=neighbours, sample=sample,
                                   n_families=n_families, threshold=threshold, index=index, ids=ids[first],
                                   exact=stacked, seed=seed)
        labels[rows] = lab[inverse.ravel()] + next_label
        next_label += int(lab.max()) + 1
        facts.update(base_model=base["base_model"], layout=base["layout"])
        per_base.append(facts)
        if "suggested_k" in facts:
            warnings.append(f"{base['base_model'] or 'base'} [{base['layout'][:8]}]: {facts['unresolved']} of "
                            f"{facts['adapters']} adapters are alone although their {neighbours} best similarities (median mean "
                            f"{facts['best_unresolved']}) are beyond chance (noise {facts['noise']}, cut {facts['cut']}): "
                            f"the sketch error hides their families; rescan with --k {facts['suggested_k']} "
                            "or run with --exact")
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")  # relabel: 0 = largest
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = rank[labels]
    sizes = [int(c) for c in counts[order]]
    group = np.asarray(pop.group)
    cohesion, bases = [], []
    members = np.argsort(labels, kind="stable")
    bounds = np.cumsum([0, *sizes])
    for f in range(len(sizes)):
        rows = members[bounds[f]:bounds[f + 1]]
        cohesion.append(None if len(rows) < 2 else round(_cohesion(pop.vectors[rows]), 4))
        bases.append(int(group[rows[0]]))
    how = (f"{n_families} families (maximum spanning forest cut)" if n_families is not None else
           f"similarity cut {1 - threshold:g}" if threshold is not None else
           f"cut at chance level over the {neighbours}-neighbour graph (alpha {ALPHA})")
    what = "exact cosine" if exact else "sketch cosine"
    return Families(labels=labels, sizes=sizes, cohesion=cohesion, base=bases, per_base=per_base, warnings=warnings,
                    method=f"connected components of the {neighbours}-nearest-neighbour graph ({what}), {how}; "
                           f"each base separately", sample=min(sample, len(pop)))


def _exact_factors(pop: Population, rows: np.ndarray) -> Any:
    from analysis.adapters import load_adapter
    from analysis.population.exact import StackedFactors

    return StackedFactors.of([load_adapter(pop.paths[r], check_finite=False) for r in rows])
