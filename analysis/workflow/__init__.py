"""One merge workflow for every face: adapter set -> merge -> preview -> export -> recipe -> evidence.

The CLI (`adapter-atlas merge`), the app's Merge page and the review store all call `run_merge` on an
`AdapterSet`; they add only argument parsing, caching and widgets. Everything is keyed by input index;
display names are for people.
"""
from analysis.isolation import CoreChoice, CoreSettings
from analysis.workflow.adapter_set import AdapterSet, display_names, most_overlapping
from analysis.workflow.evidence import EVIDENCE_VERSION, Evidence
from analysis.workflow.pipeline import (
           ExportSpec,
           MergeRun,
           preview_from_recipe,
           reexport,
           run_merge,
)
from analysis.workflow.progress import Cancelled, ProgressReporter
from analysis.workflow.steps import forecast_run, measure_run, reach_run

__all__ = ["EVIDENCE_VERSION", "AdapterSet", "Cancelled", "CoreChoice", "CoreSettings", "Evidence", "ExportSpec",
           "MergeRun", "ProgressReporter", "display_names", "forecast_run", "measure_run", "most_overlapping", "reach_run", "preview_from_recipe",
           "reexport", "run_merge"]
