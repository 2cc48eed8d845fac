"""One merge workflow for every face: adapter set -> merge -> preview -> export -> recipe -> measure -> evidence.

The CLI (`adapter-atlas merge`), the app's Merge page and the review store all call `run_merge` on an
`AdapterSet`; they add only argument parsing, caching and widgets. Everything is keyed by input index;
display names are for people. Imports are lazy so `analysis.workflow.evidence` (read by the review
store, which must not import torch) stays light.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AdapterSet": "analysis.workflow.adapter_set",
    "display_names": "analysis.workflow.adapter_set",
    "Cancelled": "analysis.workflow.progress",
    "ProgressReporter": "analysis.workflow.progress",
    "ExportSpec": "analysis.workflow.pipeline",
    "MergeRun": "analysis.workflow.pipeline",
    "run_merge": "analysis.workflow.pipeline",
    "reexport": "analysis.workflow.pipeline",
    "measure_run": "analysis.workflow.measure",
    "most_overlapping": "analysis.workflow.adapter_set",
    "EVIDENCE_VERSION": "analysis.workflow.evidence",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis.workflow' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
