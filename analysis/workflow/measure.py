"""The measure step of the merge workflow: merge -> preview -> export -> measure -> evidence.

`measure_run(run, measure)` scores the adapter written (at the export's rank, as the writer writes it), each
input adapter and the bare base on the request's model and data (`analysis.evaluation.Measure`), and returns
the run with `measured` in its evidence: the rows a proposal stores and a review report shows, with the
model identity and each data file's sha256, row count and metric. `run_merge(..., measure=...)` calls it, so
the CLI, the Merge page and a proposal get the same measured rows from one call.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.workflow.progress import ProgressReporter

if TYPE_CHECKING:
    from analysis.evaluation import Measure
    from analysis.workflow.pipeline import MergeRun


def measure_run(run: "MergeRun", measure: "Measure", progress: ProgressReporter | None = None) -> "MergeRun":
    """`run` with `evidence["measured"]` filled by `measure` (the inputs are checked to fit the model first)."""
    reporter = progress or ProgressReporter()
    measured = measure.run(run.adapters.adapters, run.written_modules(), progress=reporter.stage("measure"))
    return dataclasses.replace(run, evidence={**run.evidence, "measured": measured})
