"""Every cache of the app, in one place, grouped by what it feeds.

Loaded adapters are resources (`st.cache_resource`, read-only, shared by sessions) keyed by
path + content sha256, so a changed file on disk is a new entry. Derived tables are data
(`st.cache_data`) keyed by the tuple of (path, sha256, name) refs and the view's parameters,
i.e. by the content of their inputs. Library imports sit inside the functions so a page that
does not need a piece never pays for (or breaks on) importing it.

Other pages append their own cached functions at the end, under a heading of their own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from analysis.adapters.model import Adapter
from analysis.errors import AtlasError

AdapterRef = tuple[str, str, str]  # (path, Adapter.sha256, display name)
Progress = Callable[[int, int, str], None] | None


# --- adapters ------------------------------------------------------------------------------------
# An adapter is named and hashed by `analysis.workflow.AdapterSet`: the display name is the shortest
# path suffix that tells equal folder names apart, the hash is `Adapter.sha256` (what recipes record).
# The parsed adapter is cached per path and file state (name, size, mtime), so an edit reloads it.

def _file_state(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@st.cache_resource(show_spinner="Loading adapter…", max_entries=128)
def _parsed(path: str, state: tuple[tuple[str, int, int], ...]) -> Adapter:
    """The parsed adapter as the loader names it; `state` is in the key so edits reload."""
    from analysis.adapters import load_adapter as _load

    return _load(Path(path))


def content_sha(path: Path) -> str:
    """`Adapter.sha256` of the adapter at `path`; a path that does not load as an adapter gets the hash
    of its files (so it can still be named in a link), raises OSError when unreadable."""
    state = _file_state(Path(path))
    try:
        return _parsed(str(path), state).sha256
    except AtlasError:
        return _files_sha(str(path), state)


@st.cache_data(show_spinner=False, max_entries=256)
def _files_sha(path: str, state: tuple[tuple[str, int, int], ...]) -> str:
    from analysis.adapters.model import sha256_of_files

    p = Path(path)
    return sha256_of_files([p] if p.is_file() else [p / name for name, _, _ in state])


def load_adapter(path: str, sha256: str, name: str) -> Adapter:
    """The parsed adapter under its display name, shared read-only by all sessions (a renamed copy that
    shares the tensors, never the cached object changed in place)."""
    import dataclasses

    adapter = _parsed(path, _file_state(Path(path)))
    return adapter if adapter.name == name else dataclasses.replace(adapter, name=name, _sha256=adapter.sha256)


def load_set(paths: list[str]) -> tuple[list[AdapterRef], list[Adapter], list[str]]:
    """Load every path; failures become one-line messages instead of stopping the page."""
    from analysis.workflow import display_names

    refs: list[AdapterRef] = []
    adapters: list[Adapter] = []
    errors: list[str] = []
    for text, name in zip(paths, display_names(paths)):
        path = Path(text)
        try:
            sha = content_sha(path)
            adapter = load_adapter(str(path), sha, name)
        except (AtlasError, OSError) as exc:
            errors.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        refs.append((str(path), sha, name))
        adapters.append(adapter)
    return refs, adapters, errors


def model_order(modules: list[str] | Any) -> list[str]:
    """Module names as the model runs them (layer 2 before layer 10), for pickers and tables."""
    from analysis.workflow import AdapterSet

    return AdapterSet.model_order(list(modules))


def adapters_of(refs: tuple[AdapterRef, ...]) -> list[Adapter]:
    return [load_adapter(*ref) for ref in refs]


def adapter_set(refs: tuple[AdapterRef, ...]) -> Any:
    """The refs as an `analysis.workflow.AdapterSet` (input order, display names from the refs)."""
    from analysis.workflow import AdapterSet

    return AdapterSet(tuple(adapters_of(refs)))


@st.cache_data(show_spinner=False)
def describe(ref: AdapterRef) -> dict[str, Any]:
    from analysis.adapters.describe import describe_adapter

    return describe_adapter(load_adapter(*ref))


@st.cache_data(show_spinner=False, max_entries=256)
def singular_values(ref: AdapterRef, module: str) -> np.ndarray:
    from analysis.linalg import delta_svd

    _, s, _ = delta_svd(load_adapter(*ref).modules[module])
    return s.numpy()  # (k,)


# --- overlap -------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=32)
def shared_modules(refs: tuple[AdapterRef, ...], modules_regex: str | None = None) -> list[str]:
    from analysis.overlap import shared_modules as _shared

    return list(_shared(adapters_of(refs), modules_regex))


@st.cache_data(show_spinner=False, max_entries=4096)
def module_overlap(refs: tuple[AdapterRef, ...], module: str) -> Any:
    """One module's all-pairs `ModuleOverlap`, cached on its own."""
    from analysis.overlap import module_overlap as _module

    return _module([a.modules[module] for a in adapters_of(refs)], [ref[2] for ref in refs], module)


@st.cache_resource(show_spinner=False)
def _whole_tables() -> dict[tuple[tuple[AdapterRef, ...], str | None], dict[str, Any]]:
    """Assembled tables by (refs, regex), shared read-only by all sessions: a hit costs no unpickling."""
    return {}


def overlap_ready(refs: tuple[AdapterRef, ...], modules_regex: str | None = None) -> bool:
    """Whether the whole table of this set is computed (by the warm-up or an earlier visit)."""
    return (tuple(refs), modules_regex) in _whole_tables()


def overlap_table(refs: tuple[AdapterRef, ...], modules_regex: str | None = None,
                  progress: Progress = None) -> dict[str, Any]:
    """`analysis.overlap.overlap_table`, assembled from per-module cached pieces.

    Caching module by module (rather than the whole table in one `st.cache_data` call) lets the
    page drive an `st.progress` bar from outside the cache: Streamlit cannot replay elements a
    cached function wrote into a container created outside it. The assembled table is then kept
    whole per set (the refs carry each adapter's content sha256), so later pages pay nothing.
    """
    memo, key = _whole_tables(), (tuple(refs), modules_regex)
    if key in memo:
        return memo[key]
    modules = shared_modules(refs, modules_regex)
    table: dict[str, Any] = {}
    for done, m in enumerate(modules, start=1):
        table[m] = module_overlap(refs, m)
        if progress is not None:
            progress(done, len(modules), m)
    while len(memo) >= 16:  # oldest set out first
        memo.pop(next(iter(memo)))
    memo[key] = table
    return table


@st.cache_data(show_spinner=False, max_entries=16)
def layers_and_types(refs: tuple[AdapterRef, ...], modules_regex: str | None = None
                     ) -> tuple[list[int | str], list[str], dict[str, tuple[int | str, str]]]:
    """Layers (model order), module types, and the (layer, type) of every shared module."""
    from analysis.overlap import layer_sort_key, parse_module_name

    parsed = {m: parse_module_name(m) for m in shared_modules(refs, modules_regex)}
    layers = sorted({lt[0] for lt in parsed.values()}, key=layer_sort_key)
    types = sorted({lt[1] for lt in parsed.values()})
    return layers, types, parsed


@st.cache_data(show_spinner=False, max_entries=64)
def aggregated(refs: tuple[AdapterRef, ...], metric: str, layer: int | str | None, module_type: str | None,
               modules_regex: str | None = None) -> np.ndarray:
    """Adapter x adapter matrix of one metric over the modules of one layer and/or type (None = all)."""
    from analysis.overlap import aggregate

    _, _, parsed = layers_and_types(refs, modules_regex)
    chosen = [m for m, (lay, kind) in parsed.items()
              if (layer is None or lay == layer) and (module_type is None or kind == module_type)]
    if not chosen:
        raise AtlasError(f"no shared module at layer {layer} with type {module_type}")
    return np.asarray(aggregate(overlap_table(refs, modules_regex), metric, modules=chosen))  # (N, N)


@st.cache_data(show_spinner=False, max_entries=64)
def pair_matrix(refs: tuple[AdapterRef, ...], i: int, j: int, metric: str,
                modules_regex: str | None = None) -> tuple[list[Any], list[str], np.ndarray]:
    from analysis.overlap import pair_layer_module_matrix

    layers, types, matrix = pair_layer_module_matrix(overlap_table(refs, modules_regex), i, j, metric)
    return list(layers), list(types), np.asarray(matrix, dtype=float)  # (L, T)


# --- subspaces -----------------------------------------------------------------------------------

def most_colliding(refs: tuple[AdapterRef, ...], i: int, j: int, metric: str = "subspace_similarity") -> str:
    """The module where adapters i and j overlap most (first in model order on ties)."""
    table = overlap_table(refs)
    sign = -1.0 if metric == "mean_angle_deg" else 1.0  # small angles collide
    return max(model_order(table), key=lambda m: sign * float(getattr(table[m], metric)[i, j]))


@st.cache_data(show_spinner=False, max_entries=64)
def phi_grid(ref_i: AdapterRef, ref_j: AdapterRef, module: str, side: str = "output") -> np.ndarray:
    """phi(k, l) of Hu et al. between the top singular directions of two adapters at one module."""
    from analysis.linalg import delta_svd, subspace_similarity_grid

    u_i, _, v_i = delta_svd(load_adapter(*ref_i).modules[module])  # (n_out, r_i), _, (n_in, r_i)
    u_j, _, v_j = delta_svd(load_adapter(*ref_j).modules[module])  # (n_out, r_j), _, (n_in, r_j)
    if side == "input":
        return subspace_similarity_grid(v_i, v_j)  # (r_i, r_j)
    return subspace_similarity_grid(u_i, u_j)  # (r_i, r_j)


# --- clustering ----------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=32)
def linkage(refs: tuple[AdapterRef, ...], metric: str, method: str,
            modules_regex: str | None = None) -> dict[str, Any]:
    """Distance matrix, linkage and dendrogram layout as plain data (the fitted object is not kept)."""
    from analysis.clustering import Linkage, adapter_distance

    labels = [ref[2] for ref in refs]
    distance = np.asarray(adapter_distance(overlap_table(refs, modules_regex), metric))  # (N, N)
    fitted = Linkage(method=method).fit(distance, labels)
    return {"distance": distance, "labels": labels, "linkage": np.asarray(fitted.linkage_),
            "order": [int(k) for k in fitted.order_], "dendrogram": fitted.dendrogram_}


@st.cache_data(show_spinner=False, max_entries=64)
def cut(refs: tuple[AdapterRef, ...], metric: str, method: str, k: int | None, threshold: float | None,
        modules_regex: str | None = None) -> list[int]:
    """Group label per adapter for a cut at k groups or at a distance threshold."""
    from analysis.clustering import Linkage, adapter_distance

    distance = np.asarray(adapter_distance(overlap_table(refs, modules_regex), metric))  # (N, N)
    fitted = Linkage(method=method).fit(distance, [ref[2] for ref in refs])
    raw = fitted.cut(k=k, threshold=threshold)
    seen: dict[int, int] = {}
    for leaf in fitted.order_:  # number the groups as they appear along the dendrogram, left to right
        seen.setdefault(int(raw[leaf]), len(seen))
    return [seen[int(g)] for g in raw]


def cut_height(refs: tuple[AdapterRef, ...], metric: str, method: str, k: int) -> float:
    """The distance at which this set's tree falls into k groups (where the cut line is drawn)."""
    from analysis.clustering import cut_height as _height

    return _height(linkage(refs, metric, method)["linkage"], k)


def dendrogram_order(refs: tuple[AdapterRef, ...], metric: str, modules_regex: str | None = None) -> list[int]:
    """Adapters in dendrogram order (average linkage on the metric's distance), similar ones side by side."""
    from app.components.metrics import DISTANCE_OF_METRIC

    if len(refs) < 3:
        return list(range(len(refs)))
    try:
        return linkage(refs, DISTANCE_OF_METRIC.get(metric, "cosine"), "average", modules_regex)["order"]
    except (ImportError, AtlasError, ValueError):
        return list(range(len(refs)))


@st.cache_data(show_spinner=False, max_entries=32)
def adapter_map(refs: tuple[AdapterRef, ...], metric: str, method: str = "average", k: int | None = None,
                neighbours: int = 3) -> dict[str, Any]:
    """2-D map of the set from its distance matrix (MDS, t-SNE for many), its groups and nearest neighbours."""
    from analysis.embedding import embed_distances, nearest_neighbours, stress

    fit = linkage(refs, metric, method)
    distance = fit["distance"]  # (N, N)
    coords = embed_distances(distance, seed=0)  # (N, 2)
    groups = cut(refs, metric, method, k if k is not None else best_k(refs, metric, method), None)
    return {"coords": coords, "groups": groups, "distance": distance,
            "neighbours": nearest_neighbours(distance, neighbours), "stress": stress(distance, coords)}


@st.cache_data(show_spinner=False, max_entries=32)
def best_k(refs: tuple[AdapterRef, ...], metric: str, method: str) -> int:
    """The number of groups with the best silhouette (scikit-learn) on the precomputed distances."""
    from analysis.clustering import best_cut

    fit = linkage(refs, metric, method)
    return int(best_cut(fit["distance"], fit["linkage"])[0])


# --- capacity ------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=16)
def capacity(refs: tuple[AdapterRef, ...], r: int | None = None) -> list[dict[str, Any]]:
    """Per-module capacity rows (width, union rank, measured overlap, floor, fits_more), with their layer/type."""
    from analysis.capacity import capacity_report
    from analysis.overlap import layer_sort_key

    _, _, parsed = layers_and_types(refs)
    rows = [{**row, "layer": parsed[row["module"]][0], "type": parsed[row["module"]][1]}
            for row in capacity_report(overlap_table(refs), r=r)]
    return sorted(rows, key=lambda row: (layer_sort_key(row["layer"]), row["type"]))  # model order


# --- appended by other pages (merge, review): add a heading per page below ------------------------

# --- review --------------------------------------------------------------------------------------
# Proposals themselves are never cached: other users and CLI processes write to the store at any time.

@st.cache_resource(show_spinner=False)
def review_store(url: str) -> Any:
    """One `ReviewStore` (engine + connection pool) per store URL, shared by every session."""
    from analysis.review import ReviewStore

    return ReviewStore(url)


@st.cache_data(show_spinner="Loading the inputs and computing their overlap…", max_entries=16)
def review_overlap(url: str, proposal_id: int, recipe_sha256: str) -> Any:
    """`InputOverlap` of a proposal's inputs; the recipe hash is in the key, the proposal never changes."""
    from analysis.review.evidence import input_overlap

    return input_overlap(review_store(url).get(proposal_id))


# --- merge ---------------------------------------------------------------------------------------
# Thin wrappers over `analysis.workflow.run_merge`. A merge is keyed by (refs, method, parameters as
# sorted items, weights, diagnostic cores (granularity, p), extras policy carry|drop); the refs carry each
# input's sha256, so a changed file is a new merge. Every torch computation here runs inside
# `analysis.threads.bounded_threads` (as `run_merge` does), so concurrent sessions do not oversubscribe.
# Runs live in a process-wide memo rather than `st.cache_*`, so the page's progress bar (and Streamlit's
# interruption when Cancel is pressed) can act inside the computation.

MergeKey = tuple[tuple[AdapterRef, ...], str, tuple[tuple[str, Any], ...], tuple[float, ...] | None,
                 tuple[str, float], str]
MAX_RUNS = 48


@st.cache_resource(show_spinner=False)
def _merge_runs() -> dict[Any, Any]:
    return {}


def _remember(key: Any, value: Any) -> Any:
    memo = _merge_runs()
    while len(memo) >= MAX_RUNS:
        memo.pop(next(iter(memo)))
    memo[key] = value
    return value


@st.cache_resource(show_spinner=False, max_entries=8)
def merge_cores(refs: tuple[AdapterRef, ...], granularity: str, p: float) -> Any:
    """Every input's core masks, shared by the previews of all methods."""
    from analysis.isolation import task_cores
    from analysis.threads import bounded_threads

    with bounded_threads(None):
        return task_cores(adapters_of(refs), granularity=granularity, p=p)


def merge_ready(key: MergeKey) -> bool:
    return ("run", key) in _merge_runs()


def merge_run(key: MergeKey, progress: Any = None) -> Any:
    """The `MergeRun` of one merge (default export: exact, or the automatic rank for dense results).

    `progress(stage, done, total, eta, label)` is called while it computes (not on a memo hit)."""
    memo = _merge_runs()
    if ("run", key) in memo:
        return memo[("run", key)]
    from analysis.workflow import ExportSpec, ProgressReporter, run_merge

    refs, method, params, weights, cores, extras = key
    run = run_merge(adapter_set(refs), method, dict(params), list(weights) if weights else None,
                    ExportSpec(extras=extras), cores_default=cores, cores=merge_cores(refs, *cores),
                    progress=ProgressReporter(progress))
    return _remember(("run", key), run)


def merge_export(key: MergeKey, fmt: str, rank: int | None, progress: Any = None) -> Any:
    """The run written as `fmt` at `rank` (None: the run's own choice); only the preview is redone."""
    from analysis.workflow import ExportSpec, ProgressReporter, reexport

    run = merge_run(key, progress)
    if fmt == run.recipe.export.format and rank is None:
        return run
    memo = _merge_runs()
    if ("export", key, fmt, rank) not in memo:
        spec = ExportSpec(format=fmt, rank=rank, extras=key[5])
        _remember(("export", key, fmt, rank), reexport(run, spec, cores_default=key[4],
                                                       cores=merge_cores(key[0], *key[4]),
                                                       progress=ProgressReporter(progress)))
    return memo[("export", key, fmt, rank)]


@st.cache_data(show_spinner=False, max_entries=8)
def merge_zip(key: MergeKey, fmt: str, rank: int | None) -> tuple[str, bytes, str]:
    """(directory name, zip bytes, recipe YAML) of one export, built by the same writer the CLI uses."""
    from analysis.export import recipe_to_yaml

    run = merge_export(key, fmt, rank)
    name, data = run.to_zip()
    return name, data, recipe_to_yaml(run.recipe)


@st.cache_data(show_spinner=False)
def sample_tasks() -> list[str]:
    """Sample-set tasks with an eval split on disk (empty when the sample set is absent)."""
    from analysis.evaluate import list_tasks

    return list_tasks()


@st.cache_data(show_spinner=False, max_entries=256)
def merged_accuracy(key: MergeKey, fmt: str, rank: int | None, task: str, limit: int | None) -> dict[str, float]:
    """{accuracy, n} on one sample task (exact match, the evaluator's fixed protocol) of the adapter written
    for this merge as `fmt` at `rank` (None: the run's own rank), not of the merge kept at the cap."""
    return _accuracy(merge_export(key, fmt, rank).written_modules(), task, limit)


@st.cache_data(show_spinner=False, max_entries=256)
def adapter_accuracy(ref: AdapterRef, task: str, limit: int | None) -> dict[str, float]:
    """{accuracy, n} of one input adapter on one sample task."""
    return _accuracy(load_adapter(*ref).modules, task, limit)


@st.cache_data(show_spinner=False, max_entries=64)
def base_accuracy(task: str, limit: int | None) -> dict[str, float]:
    """{accuracy, n} of the base model alone: the floor every row is read against."""
    return _accuracy({}, task, limit)


def _accuracy(deltas: Any, task: str, limit: int | None) -> dict[str, float]:
    from analysis.base_model import load_base_model
    from analysis.evaluate import evaluate_deltas
    from analysis.threads import bounded_threads

    with bounded_threads(None):
        model, tokenizer = load_base_model()
        res = evaluate_deltas(model, tokenizer, deltas, [task], limit=limit)[task]
    return {"accuracy": float(res["accuracy"]), "n": int(res["n"])}


# --- population ----------------------------------------------------------------------------------
# An index is keyed by its folder and a stamp of its files (catalog mtime, part count), so a rescan is a new
# entry. The loaded sketches are a resource (one copy per process, read-only); map, families and neighbour
# lists are data.

def population_stamp(folder: str) -> tuple[int, int]:
    """(catalog mtime_ns, number of sketch parts): changes whenever `adapter-atlas scan` rewrites the index."""
    root = Path(folder)
    catalog = root / "catalog.parquet"
    mtime = catalog.stat().st_mtime_ns if catalog.exists() else 0
    return mtime, len(list((root / "sketches").glob("part-*.parquet")))


@st.cache_resource(show_spinner="Opening the population index…", max_entries=4)
def population(folder: str, stamp: tuple[int, int]) -> Any:
    from analysis.population.query import open_population

    return open_population(folder)


@st.cache_data(show_spinner="Placing adapters and finding families…", max_entries=8)
def population_map(folder: str, stamp: tuple[int, int], threshold: float) -> dict[str, Any]:
    """{"coords" (N, 2), "labels" (N,), "sizes", "method"} of the index's adapters."""
    from analysis.population.query import families, map_2d

    pop = population(folder, stamp)
    if len(pop) == 0:
        return {"coords": np.zeros((0, 2)), "labels": np.zeros(0, dtype=int), "sizes": [], "method": ""}
    fam = families(pop, threshold=threshold)
    return {"coords": map_2d(pop), "labels": fam.labels, "sizes": fam.sizes, "method": fam.method}


@st.cache_data(show_spinner="Searching neighbours…", max_entries=256)
def population_neighbors(folder: str, stamp: tuple[int, int], adapter: str, k: int, exact: bool) -> list[dict]:
    from analysis.population.query import neighbors

    return neighbors(population(folder, stamp), adapter, k, exact=exact)
