"""Adapter Atlas: the library. Everything computed lives here; nothing here imports streamlit.

The main jobs, each taking the one input type (an `AdapterSet`, or a list of loaded `Adapter`s):

    import analysis
    adapters = analysis.AdapterSet.from_paths(["sample_adapters/format_date", "sample_adapters/math_add"])
    table = analysis.overlap_table(adapters)                         # {module: all-pairs overlap}
    run = analysis.run_merge(adapters, "isolation", {"granularity": "rows"})  # merge, preview, recipe
    run.write("merged")                                              # a PEFT folder + recipe.yaml + preview.json

Evaluate on a model and data of your own: `analysis.Evaluator(analysis.load_model(analysis.ModelSpec(path)),
analysis.load_data([...]))`, or `analysis.measure_run(run, analysis.Measure(evaluator))` for a merge's evidence.
Estimate before measuring: `analysis.reach_run(run, analysis.Reach(loaded))` (data-free, on the model) and
`analysis.forecast_run(run, analysis.Forecast(loaded, analysis.load_prompts([...])))` (a few unlabeled prompts).
Library calls leave global state alone: torch's threads are the caller's (`with analysis.bounded_threads(2):`).
"""
import importlib
from typing import TYPE_CHECKING, Any

from analysis._version import __version__
from analysis.errors import AtlasError

# Imported on first use (PEP 562), so `adapter-atlas COMMAND` pays only for what that command needs: every
# `analysis.*` import runs this file first, and importing torch here cost every CLI refusal seconds.
_LAZY = {  # public name -> the module that defines it, imported on first use
    "Adapter": "analysis.adapters", "AdapterSet": "analysis.workflow", "CoreChoice": "analysis.isolation",
    "CoreSettings": "analysis.isolation", "Evaluator": "analysis.evaluation", "Evidence": "analysis.workflow",
    "ExportSpec": "analysis.workflow", "Linkage": "analysis.clustering", "METHODS": "analysis.merge",
    "Measure": "analysis.evaluation", "MergeRun": "analysis.workflow", "ModelSpec": "analysis.evaluation",
    "ProgressReporter": "analysis.workflow", "adapter_distance": "analysis.clustering",
    "adapter_list": "analysis.adapters", "aggregate": "analysis.overlap", "bounded_threads": "analysis.threads",
    "core_overlap": "analysis.isolation", "describe_methods": "analysis.merge",
    "detect_format": "analysis.adapters", "load_adapter": "analysis.adapters", "load_data": "analysis.evaluation",
    "load_model": "analysis.evaluation", "load_recipe": "analysis.export", "measure_run": "analysis.workflow",
    "merge_adapters": "analysis.merge", "overlap_table": "analysis.overlap",
    "preview_from_recipe": "analysis.workflow", "preview_merge": "analysis.preview",
    "reexport": "analysis.workflow", "run_merge": "analysis.workflow", "task_cores": "analysis.isolation",
    "Forecast": "analysis.forecast", "Reach": "analysis.reach", "forecast_run": "analysis.workflow",
    "load_prompts": "analysis.evaluation", "reach_run": "analysis.workflow",
}

if TYPE_CHECKING:  # the same names for type checkers and editors
    from analysis.adapters import Adapter, adapter_list, detect_format, load_adapter
    from analysis.clustering import Linkage, adapter_distance
    from analysis.evaluation import Evaluator, Measure, ModelSpec, load_data, load_model, load_prompts
    from analysis.export import load_recipe
    from analysis.forecast import Forecast
    from analysis.isolation import CoreChoice, CoreSettings, core_overlap, task_cores
    from analysis.merge import METHODS, describe_methods, merge_adapters
    from analysis.overlap import aggregate, overlap_table
    from analysis.preview import preview_merge
    from analysis.reach import Reach
    from analysis.threads import bounded_threads
    from analysis.workflow import (
        AdapterSet,
        Evidence,
        ExportSpec,
        MergeRun,
        ProgressReporter,
        forecast_run,
        measure_run,
        preview_from_recipe,
        reach_run,
        reexport,
        run_merge,
    )


__all__ = [
    "METHODS", "Adapter", "AdapterSet", "AtlasError", "CoreChoice", "CoreSettings", "Evaluator", "Evidence",
    "ExportSpec", "Forecast", "Linkage", "Measure", "MergeRun", "ModelSpec", "ProgressReporter", "Reach",
    "__version__", "adapter_distance", "adapter_list", "aggregate", "bounded_threads", "core_overlap",
    "describe_methods", "detect_format", "forecast_run", "load_adapter", "load_data", "load_model", "load_prompts",
    "load_recipe", "measure_run", "merge_adapters", "overlap_table", "preview_from_recipe", "preview_merge",
    "reach_run", "reexport", "run_merge", "task_cores",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
