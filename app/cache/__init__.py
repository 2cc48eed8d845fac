"""Every cache of the app, in one place, grouped by what it feeds.

Loaded adapters are resources (`st.cache_resource`, read-only, shared by sessions) keyed by
path + content sha256, so a changed file on disk is a new entry. Derived tables are data
(`st.cache_data`) keyed by the tuple of (path, sha256, name) refs and the view's parameters,
i.e. by the content of their inputs. Library imports sit inside the functions so a page that
does not need a piece never pays for (or breaks on) importing it.

A new page adds a module of its own here and re-exports it below.

Split by section into modules (adapters, overlap, clustering, capacity, review, merge, population, ...);
this package re-exports every name, so `from app import cache; cache.X` works for pages and tests.
"""
from __future__ import annotations

from app.cache.adapters import (  # noqa: F401
    AdapterRef,
    Progress,
    _file_state,
    _files_sha,
    _parsed,
    adapter_set,
    adapters_of,
    content_sha,
    describe,
    load_adapter,
    load_set,
    model_order,
    singular_values,
)
from app.cache.capacity import (  # noqa: F401
    capacity,
)
from app.cache.clustering import (  # noqa: F401
    adapter_map,
    best_k,
    cut,
    cut_height,
    dendrogram_order,
    linkage,
)
from app.cache.merge import (  # noqa: F401
    GENERAL_TEXT,
    MAX_RUNS,
    EvalKey,
    MergeKey,
    _merge_runs,
    _remember,
    data_tasks,
    evaluator,
    forecast_ready,
    forecasted,
    forecaster,
    measured,
    measured_ready,
    merge_cores,
    merge_export,
    merge_ready,
    merge_run,
    merge_runs,
    merge_zip,
    task_set,
    with_last_measured,
    with_measured,
)
from app.cache.overlap import (  # noqa: F401
    _whole_tables,
    aggregated,
    layers_and_types,
    module_overlap,
    most_colliding,
    overlap_ready,
    overlap_table,
    pair_matrix,
    phi_grid,
    ranked,
    shared_modules,
)
from app.cache.population import (  # noqa: F401
    population,
    population_map,
    population_neighbors,
    population_stamp,
)
from app.cache.review import (  # noqa: F401
    review_overlap,
    review_store,
)
