"""Queries over a population index: neighbours, families, a 2-D map, and exact re-ranking.

The sketch vectors estimate adapter-level Frobenius inner products (see `sketch`), so after
normalisation their dot products estimate the exact aggregated cosine of `analysis.overlap`: cosine
nearest neighbours (brute force, one matrix-vector product per query) are the candidates, and `--exact` loads only the query and the top candidates to re-rank them by the exact
factored cosine (Gram of the factors per module, `analysis.linalg.gram_all_pairs`).
Families: average-linkage agglomerative clustering (cosine distance) on a sample of the sketches, then
every adapter joins the family whose normalised centroid is nearest.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from analysis.errors import AtlasError
from analysis.population.sketch import SketchConfig, sketch_adapter
from analysis.population.store import IndexStore, vectors_of

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.6  # cosine distance at which average-linkage families stop merging
DEFAULT_SAMPLE = 2000


@dataclass(eq=False)
class Population:
    """The scanned adapters that have a sketch: paths (catalog order), their sha256 and unit sketch vectors."""

    root: Path
    config: SketchConfig
    paths: list[str]
    sha256: list[str]
    vectors: np.ndarray  # (N, k*k) float32, rows normalised (zero rows stay zero)
    norms: np.ndarray  # (N,) exact ||dW||_F
    failed: list[tuple[str, str]] = field(default_factory=list)
    _where: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def position(self, path: str | os.PathLike[str]) -> int | None:
        """Index of a scanned path (as given, or resolved), None when it was not scanned."""
        if self._where is None:
            self._where = {p: i for i, p in enumerate(self.paths)}
        text = str(path)
        if text not in self._where:
            text = str(Path(path).expanduser().resolve())
        return self._where.get(text)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def open_population(root: str | os.PathLike[str]) -> Population:
    """Join the catalog with the sketch parts of an index directory (see `store`)."""
    store = IndexStore.open(root)
    cat_paths, cat_shas, cat_errors = store.catalog_columns()
    table = store.read_sketches(["vector", "norm"])
    row_of = {sha: i for i, sha in enumerate(table.column("sha256").to_pylist())}
    paths, shas, rows, failed = [], [], [], []
    for path, sha, error in sorted(zip(cat_paths, cat_shas, cat_errors)):
        if error:
            failed.append((path, error))
        elif sha in row_of:
            paths.append(path)
            shas.append(sha)
            rows.append(row_of[sha])
        else:
            log.warning("%s: in the catalog but its sketch %s is missing; rescan", path, sha)
    idx = np.asarray(rows, dtype=np.int64)
    vectors = vectors_of(table)[idx]  # (N, k*k) float32, one copy
    lengths = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    np.divide(vectors, lengths, out=vectors, where=lengths > 0)  # unit rows in place; zero rows stay zero
    return Population(root=Path(root), config=store.config, paths=paths, sha256=shas, vectors=vectors,
                      norms=table.column("norm").to_numpy()[idx], failed=failed)


def query_vector(pop: Population, adapter: str | os.PathLike[str]) -> tuple[np.ndarray, int | None]:
    """(unit sketch (k*k,), index position or None): stored when the path was scanned, else sketched now."""
    pos = pop.position(adapter)
    if pos is not None:
        return pop.vectors[pos], pos
    from analysis.adapters import load_adapter

    sk = sketch_adapter(load_adapter(adapter), pop.config)
    return _normalise(sk.vector[None, :].astype(np.float32))[0], None


def sketch_neighbors(pop: Population, adapter: str | os.PathLike[str], k: int = 10) -> list[dict[str, Any]]:
    """The k most similar other adapters by sketch cosine, best first: [{"adapter": path, "similarity": x}].

    Exact (brute-force) search over the unit sketches: one (N, k^2) float32 matrix-vector product and a
    partial sort, ~2 GFLOP per query at 10^6 adapters (what `NearestNeighbors(metric="cosine",
    algorithm="brute")` computes, without renormalising the whole index on every query).
    """
    if len(pop) == 0:
        raise AtlasError(f"{pop.root}: the index holds no sketched adapter")
    q, pos = query_vector(pop, adapter)
    sims = pop.vectors @ q  # (N,) cosines: rows and query are unit vectors
    if pos is not None:
        sims[pos] = -np.inf  # never one's own neighbour
    n = min(k, len(pop) - (1 if pos is not None else 0))
    if n <= 0:
        return []
    top = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
    top = top[np.lexsort((top, -sims[top]))]  # best first, ties by index
    return [{"adapter": pop.paths[j], "similarity": round(float(sims[j]), 6)} for j in top if np.isfinite(sims[j])]


def exact_cosine(x: Any, y: Any) -> float:
    """Aggregated cosine of two adapters over their modules: sum_m <dW_x, dW_y> / (|dW_x| |dW_y|).

    Modules one adapter lacks (or with another shape) contribute 0 to the inner product and their energy
    to the norm; for adapters with one module set this is `aggregate(overlap_table(...), "cosine")`.
    """
    from analysis.linalg import gram_all_pairs

    inner = 0.0
    for m, d in x.modules.items():
        other = y.modules.get(m)
        if other is not None and tuple(other.shape) == tuple(d.shape):
            inner += float(gram_all_pairs([d, other])[0, 1])
    denom = x.total_norm() * y.total_norm()
    return inner / denom if denom > 0 else 0.0


def neighbors(pop: Population, adapter: str | os.PathLike[str], k: int = 10, *, exact: bool = False,
              candidates: int | None = None, may_load: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Sketch neighbours; with `exact`, the top `candidates` (default max(3k, k + 10)) re-ranked exactly.

    Exact rows carry "similarity" (exact cosine) and "sketch_similarity"; unreadable candidates are skipped, and
    so are those `may_load` refuses (a shared server loads only files under its roots; the query must pass).
    """
    if not exact:
        return sketch_neighbors(pop, adapter, k)
    from analysis.adapters import load_adapter

    if may_load is not None and not may_load(str(adapter)):
        raise AtlasError(f"{adapter}: the exact re-rank would load it, and it lies outside what may be loaded here")
    pool = sketch_neighbors(pop, adapter, candidates or max(3 * k, k + 10))
    query = load_adapter(adapter, check_finite=False)
    rows = []
    for hit in pool:
        if may_load is not None and not may_load(hit["adapter"]):
            log.info("%s: not loaded for the exact re-rank (outside what may be loaded)", hit["adapter"])
            continue
        try:
            other = load_adapter(hit["adapter"], check_finite=False)
        except (AtlasError, OSError) as exc:
            log.warning("%s: skipped in the exact re-rank: %s", hit["adapter"], exc)
            continue
        rows.append({"adapter": hit["adapter"], "similarity": round(exact_cosine(query, other), 6),
                     "sketch_similarity": hit["similarity"]})
    rows.sort(key=lambda r: -r["similarity"])
    return rows[:k]


@dataclass(frozen=True, eq=False)
class Families:
    """labels (N,) in population order (0 = largest family), sizes per label, how they were found."""

    labels: np.ndarray
    sizes: list[int]
    method: str
    sample: int


def families(pop: Population, *, n_families: int | None = None, threshold: float = DEFAULT_THRESHOLD,
             sample: int = DEFAULT_SAMPLE, seed: int = 0) -> Families:
    """Agglomerative (average, cosine) on a sample, cut at k families or at a distance threshold; all join."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(pop)
    if n == 0:
        raise AtlasError(f"{pop.root}: the index holds no sketched adapter")
    if n_families is not None and not 1 <= n_families <= min(n, sample):
        raise AtlasError(f"families: need 1 <= K <= {min(n, sample)} (adapters in the sample), got {n_families}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    x = pop.vectors[chosen].astype(np.float64)  # (S, D)
    if len(chosen) == 1:
        sample_labels = np.zeros(1, dtype=int)
    else:
        model = AgglomerativeClustering(
            n_clusters=n_families, metric="cosine", linkage="average",
            distance_threshold=None if n_families is not None else threshold)
        sample_labels = model.fit_predict(x)
    # every adapter joins the nearest sample family (cosine to the normalised centroids)
    ids = np.unique(sample_labels)
    centroids = _normalise(np.stack([x[sample_labels == c].mean(0) for c in ids]))  # (F, D)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, 8192):
        block = pop.vectors[start:start + 8192].astype(np.float64) @ centroids.T  # (b, F)
        labels[start:start + 8192] = block.argmax(1)
    counts = np.bincount(labels, minlength=len(ids))
    order = np.argsort(-counts, kind="stable")  # relabel: 0 = largest
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = rank[labels]
    how = f"{n_families} families" if n_families is not None else f"distance threshold {threshold}"
    return Families(labels=labels, sizes=[int(c) for c in counts[order] if c > 0],
                    method=f"average-linkage agglomerative (cosine) on {len(chosen)} sampled sketches, {how}; "
                           "the rest join the nearest centroid", sample=len(chosen))


def map_2d(pop: Population, *, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates for the adapter map: PCA of the unit sketches (`analysis.embedding.embed_features`)."""
    from analysis.embedding import embed_features

    return embed_features(pop.vectors, seed=seed)
