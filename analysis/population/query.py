"""Queries over a population index: neighbours, a 2-D map, and exact re-ranking (families: `families`).

The sketch vectors estimate adapter-level Frobenius inner products (see `sketch`), so after normalisation
their dot products estimate the exact aggregated cosine of `analysis.overlap`. Every query stays inside one
base (base model named in the adapter's config and module layout, `ann.group_key`): adapters of different
bases are never compared. Candidates come from the base's approximate index (`ann`, faiss) when the index
has one, else from a brute-force pass over the base's sketches; either way they are re-ranked by the float32
sketch cosine, and `--exact` loads the query and the candidates to re-rank them by the exact factored cosine
(`analysis.linalg.gram_all_pairs`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from analysis.errors import AtlasError
from analysis.population.ann import AnnIndex, group_key, load_indexes, sha_ids
from analysis.population.chance import null_level
from analysis.population.sketch import SketchConfig, sketch_adapter
from analysis.population.store import RESCAN, IndexStore, PopulationIndexError, vectors_of

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Population:
    """The scanned adapters that have a sketch: paths (catalog order), their sha256, unit sketch vectors, bases."""

    root: Path
    config: SketchConfig
    paths: list[str]
    sha256: list[str]
    vectors: np.ndarray  # (N, k*k) float32, rows normalised (zero rows stay zero)
    norms: np.ndarray  # (N,) exact ||dW||_F
    failed: list[tuple[str, str]] = field(default_factory=list)
    group: np.ndarray | None = None  # (N,) int: position in `bases`
    bases: list[dict[str, Any]] = field(default_factory=list)  # {"key", "base_model", "layout"}
    ann: dict[str, AnnIndex] = field(default_factory=dict)  # base key -> approximate index (may be empty)
    _where: dict[str, int] | None = None
    _ids: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.group is None:  # one base (tests and benches that build a Population in memory)
            self.group = np.zeros(len(self.paths), dtype=np.int64)
            self.bases = self.bases or [{"key": group_key("", ""), "base_model": "", "layout": ""}]

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

    def members(self, base: int) -> np.ndarray:
        """Positions of the adapters of one base."""
        return np.flatnonzero(self.group == base)

    def rows_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """Positions whose content id is in `ids` (every copy of a content)."""
        if self._ids is None:
            own = sha_ids(self.sha256)
            order = np.argsort(own, kind="stable")
            self._ids = (own[order], order)
        sorted_ids, order = self._ids
        ids = np.asarray(ids, dtype=np.int64)
        lo, hi = np.searchsorted(sorted_ids, ids, "left"), np.searchsorted(sorted_ids, ids, "right")
        return np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(ids) else np.zeros(0, dtype=np.int64)

    def base_of(self, base_model: str | None, layout: str) -> int | None:
        key = group_key(base_model, layout)
        return next((i for i, b in enumerate(self.bases) if b["key"] == key), None)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def open_population(root: str | os.PathLike[str], *, ann: bool = True, attempts: int = 3) -> Population:
    """Join the catalog with the sketch parts of an index directory (see `store`); one line if it is damaged.

    Readers take no lock: a scan or compaction may publish a new catalog, parts or neighbour index while this
    reads (each file by atomic rename; `compact` removes old parts after writing new ones). A read that fails
    while the index's published files changed under it is read again, so a reader sees a consistent index
    and an error only for damage that stays.
    """
    for attempt in range(attempts):
        before = _published(Path(root))
        try:
            return _open_once(root, ann=ann)
        except PopulationIndexError:
            if attempt == attempts - 1 or _published(Path(root)) == before:
                raise
            log.info("%s: changed by a writer while being read; reading it again", root)
    raise AssertionError("unreachable")


def _published(root: Path) -> tuple:
    """A stamp of what a writer publishes: the catalog's and manifest's identity, the part names."""
    def ident(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    try:
        parts = tuple(sorted(p.name for p in (root / "sketches").glob("part-*.parquet")))
    except OSError:
        parts = ()
    return ident(root / "catalog.parquet"), ident(root / "ann" / "manifest.json"), parts


def _open_once(root: str | os.PathLike[str], *, ann: bool) -> Population:
    store = IndexStore.open(root)
    cat_paths, cat_shas, cat_errors = store.catalog_columns()
    live = {s for s, e in zip(cat_shas, cat_errors) if s and not e}
    table = store.read_sketches(["vector", "norm", "base_model", "layout"], keep=live)
    row_of = {sha: i for i, sha in enumerate(table.column("sha256").to_pylist())}
    paths, shas, rows, failed = [], [], [], []
    for path, sha, error in sorted(zip(cat_paths, cat_shas, cat_errors)):
        if error:
            failed.append((path, error))
        elif sha in row_of:
            paths.append(path)
            shas.append(sha)
            rows.append(row_of[sha])
    if len(paths) < len(live) or len(paths) + len(failed) < len(cat_paths):
        missing = sum(1 for s, e in zip(cat_shas, cat_errors) if not e and s not in row_of)
        raise PopulationIndexError(f"{store.catalog_path}: {missing} adapter(s) have no sketch in {store.parts} "
                                   f"(a part is missing or damaged); {RESCAN}")
    idx = np.asarray(rows, dtype=np.int64)
    vectors = vectors_of(table)[idx]  # (N, k*k) float32, one copy
    lengths = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    np.divide(vectors, lengths, out=vectors, where=lengths > 0)  # unit rows in place; zero rows stay zero
    keys = [group_key(b, lay) for b, lay in zip(table.column("base_model").to_pylist(),
                                                  table.column("layout").to_pylist())]
    codes, bases = {}, []
    for b, lay, key in zip(table.column("base_model").to_pylist(), table.column("layout").to_pylist(), keys):
        if key not in codes:
            codes[key] = len(bases)
            bases.append({"key": key, "base_model": b or "", "layout": lay})
    group = np.asarray([codes[keys[r]] for r in rows], dtype=np.int64)
    return Population(root=Path(root), config=store.config, paths=paths, sha256=shas, vectors=vectors,
                      norms=table.column("norm").to_numpy()[idx], failed=failed, group=group, bases=bases,
                      ann=load_indexes(store) if ann else {})


def query_vector(pop: Population, adapter: str | os.PathLike[str]) -> tuple[np.ndarray, int | None, int]:
    """(unit sketch (k*k,), index position or None, base): stored when the path was scanned, else sketched now."""
    pos = pop.position(adapter)
    if pos is not None:
        return pop.vectors[pos], pos, int(pop.group[pos])
    from analysis.adapters import load_adapter

    loaded = load_adapter(adapter)
    sk = sketch_adapter(loaded, pop.config)
    base = pop.base_of(loaded.base_model, sk.layout)
    if base is None:
        known = "; ".join(f"{b['base_model'] or '(no base named)'} [{b['layout'][:8]}]" for b in pop.bases[:5])
        raise AtlasError(f"{adapter}: no adapter of its base ({loaded.base_model or 'no base named'}, "
                         f"{len(loaded.modules)} modules, layout {sk.layout[:8]}) in {pop.root}; "
                         f"the index holds: {known}")
    return _normalise(sk.vector[None, :].astype(np.float32))[0], None, base


def candidate_rows(pop: Population, q: np.ndarray, base: int, n: int) -> np.ndarray:
    """Positions of at least the n best candidates of base `base` for the unit query q (all copies included)."""
    index = pop.ann.get(pop.bases[base]["key"])
    if index is None or index.kind == "flat" and len(index) < 2048:  # brute force is as fast and exact
        return pop.members(base)
    _, ids = index.search(q[None, :], n)
    return pop.rows_of_ids(ids[0][ids[0] >= 0])


def sketch_neighbors(pop: Population, adapter: str | os.PathLike[str], k: int = 10, *,
                     pool: int | None = None) -> list[dict[str, Any]]:
    """The k most similar other adapters of the same base by sketch cosine, best first.

    [{"adapter": path, "similarity": x}]. Candidates: `pool` (default max(4k, k + 32)) from the approximate
    index, or every adapter of the base without one; ranked by the float32 sketch cosine.
    """
    if len(pop) == 0:
        raise AtlasError(f"{pop.root}: the index holds no sketched adapter")
    q, pos, base = query_vector(pop, adapter)
    rows = candidate_rows(pop, q, base, pool or max(4 * k, k + 32))
    if pos is not None:
        rows = rows[rows != pos]  # never one's own neighbour
    if len(rows) == 0:
        return []
    sims = pop.vectors[rows] @ q  # (C,) cosines: rows and query are unit vectors
    n = min(k, len(rows))
    top = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
    top = top[np.lexsort((rows[top], -sims[top]))]  # best first, ties by position
    return [{"adapter": pop.paths[rows[j]], "similarity": round(float(sims[j]), 6)} for j in top]


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


MAX_EXACT_POOL = 1000  # adapters loaded at most for one exact re-rank


def noise_level(pop: Population, base: int, *, pairs: int = 20000, seed: int = 0) -> tuple[float, float]:
    """(centre, spread) of the sketch cosine of random pairs of one base (`chance.null_level`).

    Random pairs are mostly unrelated adapters, so this is the sketch's own error plus the exact cosine of
    unrelated updates: what a similarity must exceed to mean anything. Cached per base on the population.
    """
    cache = pop.__dict__.setdefault("_noise", {})
    if base not in cache:
        rows = pop.members(base)
        if len(rows) < 3:
            cache[base] = (0.0, 0.0)
        else:
            rng = np.random.default_rng(seed)
            i = rng.choice(rows, size=pairs)
            j = rng.choice(rows, size=pairs)
            keep = i != j
            cache[base] = null_level(np.einsum("pd,pd->p", pop.vectors[i[keep]], pop.vectors[j[keep]]))
    return cache[base]


def neighbors(pop: Population, adapter: str | os.PathLike[str], k: int = 10, *, exact: bool = False,
              candidates: int | None = None, may_load: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Sketch neighbours; with `exact`, candidates re-ranked by the exact cosine (loading each one).

    The exact pool: `candidates` if given, else every adapter whose sketch similarity is within 4 noise
    spreads (`noise_level`) of the k-th best, at least max(3k, k + 10) and at most MAX_EXACT_POOL: where the
    sketch error is the size of the signal the pool widens, so the true k best are in it.
    Exact rows carry "similarity" (exact cosine) and "sketch_similarity"; unreadable candidates are skipped, and
    so are those `may_load` refuses (a shared server loads only files under its roots; the query must pass).
    """
    if not exact:
        return sketch_neighbors(pop, adapter, k)
    from analysis.adapters import load_adapter

    if may_load is not None and not may_load(str(adapter)):
        raise AtlasError(f"{adapter}: the exact re-rank would load it, and it lies outside what may be loaded here")
    pool = sketch_neighbors(pop, adapter, candidates or MAX_EXACT_POOL, pool=candidates or MAX_EXACT_POOL)
    if candidates is None and len(pool) > k:
        _, _, base = query_vector(pop, adapter)
        _, spread = noise_level(pop, base)
        floor = pool[min(k, len(pool)) - 1]["similarity"] - 4 * spread
        keep = max(3 * k, k + 10, sum(1 for hit in pool if hit["similarity"] >= floor))
        pool = pool[:keep]
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


def map_2d(pop: Population, *, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates for the adapter map: PCA of the unit sketches (`analysis.embedding.embed_features`)."""
    from analysis.embedding import embed_features

    return embed_features(pop.vectors, seed=seed)
