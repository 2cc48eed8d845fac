"""The steps that add evidence to a `MergeRun` once a model is at hand (after `run_merge`), in this order:

1. `reach_run(run, Reach(loaded))`: each task's weights-only estimate is replaced by the data-free one on the model
   (`analysis.reach`: how far the task's adapter and what the merge adds move the model on text it wrote itself);
2. `forecast_run(run, Forecast(...))`: the data-free estimate is replaced by the data-light one (does the written
   adapter reproduce each task's own answers on a few unlabeled prompts; `analysis.forecast.Forecast`), keeping
   the data-free one beside it;
3. `measure_run(run, Measure(...))`: the adapter written, each input and the base measured on a named model and
   data: the evidence's `measured` block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from analysis.workflow.pipeline import MergeRun
from analysis.workflow.progress import ProgressReporter


def forecast_run(run: MergeRun, forecast: Any, progress: ProgressReporter | None = None) -> MergeRun:
    """The data-light estimate step: `run` with each `tasks[i].predicted_retention` from `forecast` (an
    `analysis.forecast.Forecast`: model x unlabeled prompts) on the adapter written; the data-free estimate it
    replaces stays as `predicted_retention_data_free`. An input the prompts do not cover keeps the data-free one."""
    reporter = progress or ProgressReporter()
    tick = reporter.stage("estimate")
    inputs = run.adapters.adapters
    forecast.check(inputs)
    preds = forecast.run(inputs, run.written_modules(), weights=run.result.weights)
    tick(1, 1, "")
    return _with_estimates(run, preds, "predicted_retention_data_free")


def reach_run(run: MergeRun, reach: Any, progress: ProgressReporter | None = None) -> MergeRun:
    """The data-free estimate on a loaded model: `run` with each `tasks[i].predicted_retention` from `reach` (an
    `analysis.reach.Reach`: how far the task's own adapter and what the merge adds to it move the base model on text
    the base model wrote; no task data); the weights-only estimate it replaces stays as
    `predicted_retention_weights`. Run before `forecast_run`, which then keeps this one as the data-free estimate."""
    from analysis.predict import estimate_reach

    reporter = progress or ProgressReporter()
    tick = reporter.stage("reach")
    inputs = run.adapters.adapters
    reach.loaded.check_fit(inputs)
    on = reach.identity()
    preds = [estimate_reach(s, on) for s in reach.signals(inputs, run.written_modules(), weights=run.result.weights)]
    tick(1, 1, "")
    for row in run.evidence.get("tasks") or []:  # only the weights-only estimate is replaced, never a data-light one
        if (row.get("predicted_retention") or {}).get("basis", "data-free") != "data-free" and row.get("index") is not None:
            preds[row["index"]] = None
    return _with_estimates(run, preds, "predicted_retention_weights")


def _with_estimates(run: MergeRun, preds: Sequence[Any], keep_as: str) -> MergeRun:
    """`run` whose `tasks[i].predicted_retention` is `preds[index]` where there is one (a `Prediction`); the estimate
    it replaces stays under `keep_as`. Without a preview (--no-preview) the estimates still reach the record, one row
    per input."""
    tasks = run.evidence.get("tasks")
    if not tasks:
        rows_only = [{"index": i, "name": name, "predicted_retention": p.record() if p is not None else None}
                     for i, (name, p) in enumerate(zip(run.adapters.names, preds))]
        return dataclasses.replace(run, evidence={**run.evidence, "tasks": rows_only})
    rows = []
    for row in tasks:
        pred = preds[row["index"]] if row.get("index") is not None and row["index"] < len(preds) else None
        if pred is None:
            rows.append(row)
            continue
        rows.append({**row, "predicted_retention": pred.record(), keep_as: row.get("predicted_retention")})
    return dataclasses.replace(run, evidence={**run.evidence, "tasks": rows})


def measure_run(run: MergeRun, measure: Any, progress: ProgressReporter | None = None) -> MergeRun:
    """The measure step (merge -> preview -> export -> measure -> evidence): `run` with `evidence["measured"]`
    filled by `measure` (an `analysis.evaluation.Measure`: model x data) on the adapter written (at the export's
    rank, as the writer writes it), each input and the bare base; the inputs are checked to fit the model first.
    The CLI, the Merge page and a proposal get the same measured rows from this one call."""
    reporter = progress or ProgressReporter()
    measured = measure.run(run.adapters.adapters, run.written_modules(), progress=reporter.stage("measure"))
    return dataclasses.replace(run, evidence={**run.evidence, "measured": measured})
