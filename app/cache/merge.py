"""`app.cache` section: merge (see `app/cache/__init__.py` for the caching rules)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import streamlit as st

from app.cache.adapters import AdapterRef, adapter_set, adapters_of

# --- merge ---------------------------------------------------------------------------------------
# Thin wrappers over `analysis.workflow.run_merge`. A merge is keyed by (refs, method, parameters as
# sorted items, weights, diagnostic cores (granularity, p), extras policy carry|drop); the refs carry each
# input's sha256, so a changed file is a new merge. Every torch computation here runs inside
# `analysis.threads.bounded_threads` (this face sets the threads; the library never does), so concurrent
# sessions do not oversubscribe.
# Runs live in a process-wide memo rather than `st.cache_*`, so the page's progress bar (and Streamlit's
# interruption when Cancel is pressed) can act inside the computation.

class MergeKey(NamedTuple):
    """What identifies one merge on the page (hashable: the memo's key)."""

    refs: tuple[AdapterRef, ...]  # the inputs, each with its sha256
    method: str
    params: tuple[tuple[str, Any], ...]  # sorted items
    weights: tuple[float, ...] | None
    cores: tuple[str, float]  # (granularity, p) of the diagnostic cores
    extras: str  # carry | drop


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
    from analysis.workflow.parallel import default_workers

    with bounded_threads(None):  # one worker per core, as the comparison that follows
        return task_cores(adapters_of(refs), granularity=granularity, p=p, workers=default_workers(2))


def merge_ready(key: MergeKey) -> bool:
    return ("run", key) in _merge_runs()


def merge_run(key: MergeKey, progress: Any = None) -> Any:
    """The `MergeRun` of one merge (default export: exact, or the automatic rank for dense results).

    `progress(stage, done, total, eta, label)` is called while it computes (not on a memo hit)."""
    memo = _merge_runs()
    if ("run", key) in memo:
        return memo[("run", key)]
    return _remember(("run", key), _merge_job(key)(progress))


def _merge_job(key: MergeKey) -> Any:
    """`job(progress)` running one merge of `key`: its Streamlit-cached inputs (adapter set, cores) are
    resolved now, in the caller's (script) thread, so the job itself runs library code only."""
    from analysis.threads import bounded_threads
    from analysis.workflow import CoreChoice, CoreSettings, ExportSpec, ProgressReporter, run_merge

    aset = adapter_set(key.refs)
    cores = CoreChoice(CoreSettings(*key.cores), merge_cores(key.refs, *key.cores))

    def job(progress: Any) -> Any:
        with bounded_threads(None):  # side by side, `run_side_by_side` has already capped each worker at 1
            return run_merge(aset, key.method, dict(key.params), list(key.weights) if key.weights else None,
                             ExportSpec(extras=key.extras), preview=cores, progress=ProgressReporter(progress))

    return job


def merge_runs(keys: list[MergeKey], progress: Any = None, poll: Any = None) -> dict[MergeKey, Any]:
    """{key: MergeRun, or the AtlasError its merge raised} for several merges, the missing ones computed
    side by side (`analysis.workflow.parallel.run_side_by_side`: one merge per core, one torch thread each).

    Everything Streamlit is touched here, in the script's thread (the cached adapter set and cores);
    the workers run only library code. `progress(key, stage, done, total, eta, label)` is called from the
    workers (bookkeeping only); `poll()` from this thread, to redraw and to stop (raise) on Cancel."""
    from analysis.workflow.parallel import run_side_by_side

    memo = _merge_runs()
    jobs = {key: _merge_job(key) for key in keys if ("run", key) not in memo}

    def keep(key: MergeKey, value: Any) -> None:  # as each merge finishes: a Cancel keeps what was done
        if not isinstance(value, Exception):
            _remember(("run", key), value)

    done = run_side_by_side(jobs, progress=progress, poll=poll, on_result=keep) if jobs else {}
    return {key: memo.get(("run", key), done.get(key)) for key in keys}


def merge_export(key: MergeKey, fmt: str, rank: int | None, progress: Any = None, dtype: str = "fp32") -> Any:
    """The run written as `fmt` at `rank` (None: the run's own choice) in `dtype`; only the preview is redone."""
    from analysis.threads import bounded_threads
    from analysis.workflow import CoreChoice, CoreSettings, ExportSpec, ProgressReporter, reexport

    run = merge_run(key, progress)
    if fmt == run.recipe.export.format and rank is None and dtype == run.recipe.export.dtype:
        return run
    memo = _merge_runs()
    if ("export", key, fmt, rank, dtype) not in memo:
        spec = ExportSpec(format=fmt, rank=rank, extras=key.extras, dtype=dtype)
        cores = CoreChoice(CoreSettings(*key.cores), merge_cores(key.refs, *key.cores))
        with bounded_threads(None):
            _remember(("export", key, fmt, rank, dtype), reexport(run, spec, preview=cores,
                                                                  progress=ProgressReporter(progress)))
    return memo[("export", key, fmt, rank, dtype)]


@st.cache_data(show_spinner=False, max_entries=8)
def merge_zip(key: MergeKey, fmt: str, rank: int | None, dtype: str = "fp32") -> tuple[str, bytes, str]:
    """(directory name, zip bytes, recipe YAML) of one export, built by the same writer the CLI uses."""
    from analysis.export import recipe_to_yaml

    run = merge_export(key, fmt, rank, dtype=dtype)
    name, data = run.to_zip()
    return name, data, recipe_to_yaml(run.recipe)


# --- measuring (the workflow's measure step on the adapter written) ---------------------------------
# One Evaluator per (model, data, metric, limit), shared read-only: it holds the loaded model (restored
# bit-exactly after every job, one job at a time) and remembers the base's and each input's scores by sha256.

EvalKey = tuple[str | None, tuple[str, ...], tuple[tuple[str, int, int], ...], str, int | None]
GENERAL_TEXT = Path(__file__).resolve().parents[2] / "sample_adapters" / "general_text.jsonl"


def task_set(data_paths: tuple[str, ...], metric: str) -> Any:
    """The tasks of `data_paths` (none: the sample tasks) with `metric`; the shipped generic text
    (`GENERAL_TEXT`, when listed) is always scored by NLL: the general-text check."""
    from analysis.evaluation import load_data, load_task
    from analysis.evaluation.tasks import TaskSet

    general = [p for p in data_paths if Path(p) == GENERAL_TEXT]
    rest = [p for p in data_paths if Path(p) != GENERAL_TEXT]
    data = load_data(rest or None, metric=metric)
    extra = tuple(load_task(Path(p).stem, p, "nll") for p in general if Path(p).stem not in data.names)
    return TaskSet(data.tasks + extra, data.assignments)


@st.cache_resource(show_spinner=False, max_entries=2)
def evaluator(key: EvalKey) -> Any:
    """The Evaluator of `key` = (model path or None for the sample base, data paths, their stamps, metric,
    limit): data validated first, then the model loaded."""
    from analysis.evaluation import Evaluator, ModelSpec, load_model

    model, data_paths, _stamps, metric, limit = key
    data = task_set(data_paths, metric)
    return Evaluator(load_model(ModelSpec(model)), data, limit=limit)


@st.cache_data(show_spinner=False, max_entries=16)
def data_tasks(data_paths: tuple[str, ...], stamps: tuple[tuple[str, int, int], ...], metric: str) -> list[str]:
    """Task names of the data (validated; an error names file:line)."""
    return task_set(data_paths, metric).names


def measured(key: MergeKey, fmt: str, rank: int | None, ekey: EvalKey, tasks: tuple[str, ...],
             progress: Any = None) -> dict[str, Any]:
    """The evidence's `measured` block of the adapter written for this merge (as `fmt` at `rank`), each
    input and the base, on `tasks` of the evaluator's data. Memoized with the merge runs."""
    from analysis.evaluation import Evaluator, Measure
    from analysis.threads import bounded_threads
    from analysis.workflow import ProgressReporter, measure_run

    memo = _merge_runs()
    mkey = ("measured", key, fmt, rank, ekey, tasks)
    if mkey not in memo:
        run = merge_export(key, fmt, rank)
        full = evaluator(ekey)
        ev = Evaluator(full.loaded, full.data.select(list(tasks)), limit=full.limit, batch_size=full.batch_size)
        ev.share_memo(full)  # the base and the inputs are scored once across merges
        with bounded_threads(None):
            _remember(mkey, measure_run(run, Measure(ev), ProgressReporter(progress)).evidence["measured"])
    return memo[mkey]


@st.cache_resource(show_spinner=False, max_entries=2)
def forecaster(key: EvalKey) -> Any:
    """The data-light estimate on the evaluator's model and the prompts of its data (answers never read); it
    remembers each input's own answers, so several merges of the same inputs generate them once."""
    from analysis.forecast import Forecast

    full = evaluator(key)
    return Forecast(full.loaded, full.data)


@st.cache_resource(show_spinner=False, max_entries=2)
def reacher(key: EvalKey) -> Any:
    """The data-free reach estimate on the evaluator's model (`analysis.reach`: probes the model writes itself, no
    data read); it remembers the probes, the base's answers to them and each input's own reach."""
    from analysis.reach import Reach

    return Reach(evaluator(key).loaded)


def forecasted(key: MergeKey, fmt: str, rank: int | None, ekey: EvalKey, progress: Any = None) -> list[dict[str, Any]]:
    """The evidence's `tasks` of the adapter written for this merge with the estimates that need the model: the
    data-free one on it (`analysis.workflow.reach_run`), then the data-light one (`forecast_run`), which keeps the
    first as `predicted_retention_data_free`; an input without prompts of its own keeps the data-free one. Memoized."""
    from analysis.threads import bounded_threads
    from analysis.workflow import ProgressReporter, forecast_run, reach_run

    memo = _merge_runs()
    fkey = ("forecast", key, fmt, rank, ekey)
    if fkey not in memo:
        run = merge_export(key, fmt, rank)
        with bounded_threads(None):
            run = reach_run(run, reacher(ekey), ProgressReporter(progress))
            _remember(fkey, forecast_run(run, forecaster(ekey), ProgressReporter(progress)).evidence["tasks"])
    return memo[fkey]


def forecast_ready(key: MergeKey, fmt: str, rank: int | None, ekey: EvalKey) -> bool:
    return ("forecast", key, fmt, rank, ekey) in _merge_runs()


def measured_ready(key: MergeKey, fmt: str, rank: int | None, ekey: EvalKey, tasks: tuple[str, ...]) -> bool:
    """Whether the server still holds this measurement (a link then shows it without measuring again)."""
    return ("measured", key, fmt, rank, ekey, tasks) in _merge_runs()


def with_measured(key: MergeKey, fmt: str, rank: int | None, ekey: EvalKey, tasks: tuple[str, ...],
                  decision: Any = None, dtype: str = "fp32") -> Any:
    """The export run of this merge (stored in `dtype`) with the `measured` block of exactly this measurement
    (when held; measured on the fp32 export) and the decision table frozen into its evidence: what a proposal
    stores."""
    import dataclasses

    run = merge_export(key, fmt, rank, dtype=dtype)
    extra: dict[str, Any] = {}
    light = _merge_runs().get(("forecast", key, fmt, rank, ekey))
    if light is not None:  # the data-light estimate the page showed travels with the proposal
        extra["tasks"] = light
    block = _merge_runs().get(("measured", key, fmt, rank, ekey, tasks))
    if block is not None:
        extra["measured"] = block
        if decision is not None:
            extra["decision"] = decision
    return dataclasses.replace(run, evidence={**run.evidence, **extra}) if extra else run


def with_last_measured(key: MergeKey, fmt: str, rank: int | None) -> Any:
    """The export run of this merge with the most recent `measured` block of the same adapter written (as
    the Measured section computed it), so a proposal stores the measured rows it was shown; else as is."""
    import dataclasses

    run = merge_export(key, fmt, rank)
    blocks = [v for k, v in _merge_runs().items() if isinstance(k, tuple) and k[:4] == ("measured", key, fmt, rank)]
    return dataclasses.replace(run, evidence={**run.evidence, "measured": blocks[-1]}) if blocks else run
