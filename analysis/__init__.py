"""Adapter Atlas: the library. Everything computed lives here; nothing here imports streamlit.

The main jobs, each taking the one input type (an `AdapterSet`, or a list of loaded `Adapter`s):

    import analysis
    adapters = analysis.AdapterSet.from_paths(["sample_adapters/format_date", "sample_adapters/math_add"])
    table = analysis.overlap_table(adapters)                         # {module: all-pairs overlap}
    run = analysis.run_merge(adapters, "isolation", {"granularity": "rows"})  # merge, preview, recipe
    run.write("merged")                                              # a PEFT folder + recipe.yaml + preview.json

Library calls leave global state alone: torch's threads are the caller's (`with analysis.bounded_threads(2):`).
"""
from analysis._version import __version__
from analysis.adapters import Adapter, adapter_list, detect_format, load_adapter
from analysis.clustering import Linkage, adapter_distance
from analysis.errors import AtlasError
from analysis.export import load_recipe
from analysis.isolation import CoreChoice, CoreSettings, core_overlap, task_cores
from analysis.merge import METHODS, describe_methods, merge_adapters
from analysis.overlap import aggregate, overlap_table
from analysis.preview import preview_merge
from analysis.threads import bounded_threads
from analysis.workflow import (
    AdapterSet,
    Evidence,
    ExportSpec,
    MergeRun,
    ProgressReporter,
    preview_from_recipe,
    reexport,
    run_merge,
)

# TODO(issue 17): export the evaluation entry point (analysis.evaluation) here once it lands on main.

__all__ = [
    "METHODS", "Adapter", "AdapterSet", "AtlasError", "CoreChoice", "CoreSettings", "Evidence", "ExportSpec",
    "Linkage", "MergeRun", "ProgressReporter", "__version__", "adapter_distance", "adapter_list", "aggregate",
    "bounded_threads", "core_overlap", "describe_methods", "detect_format", "load_adapter", "load_recipe",
    "merge_adapters", "overlap_table", "preview_from_recipe", "preview_merge", "reexport", "run_merge", "task_cores",
]
