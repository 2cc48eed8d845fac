"""The one progress callback type of the library: `progress(done, total, label)`, called after each step.

Library functions that take long (merge, preview, cores, overlap tables) accept one and call it per module;
`analysis.workflow.progress.ProgressReporter.stage` makes one that adds stages, an ETA and cancellation.
"""
from __future__ import annotations

from typing import Callable

Progress = Callable[[int, int, str], None]  # (done, total, label: usually the module just finished)
