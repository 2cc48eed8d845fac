"""Progress with an ETA, and cooperative cancellation, for the long steps of a merge.

The pipeline reports `(done, total, label)` per module through one `ProgressReporter`; the face
decides how to show it (tqdm in the CLI, `st.progress` in the app). A face cancels by raising
`Cancelled` from its callback (or by setting `cancel_requested`): the pipeline stops at the next
module and nothing is written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from analysis.errors import Cancelled
from analysis.progress import Progress

__all__ = ["Cancelled", "Progress", "ProgressFn", "ProgressReporter", "format_eta"]

# callback(stage, done, total, eta_seconds or None, label)
ProgressFn = Callable[[str, int, int, "float | None", str], None]


@dataclass
class ProgressReporter:
    """Turns per-module steps of named stages into callbacks with an ETA from the stage's mean pace."""

    callback: ProgressFn | None = None
    cancel_requested: Callable[[], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    _started: dict[str, float] = field(default_factory=dict)

    def step(self, stage: str, done: int, total: int, label: str = "") -> None:
        """Report `done` of `total` in `stage`; raises `Cancelled` when the face asked to stop."""
        now = self.clock()
        start = self._started.setdefault(stage, now)
        eta = (now - start) / done * (total - done) if done > 0 and total >= done else None
        if self.callback is not None:
            self.callback(stage, done, total, eta, label)
        self.check()

    def check(self) -> None:
        if self.cancel_requested is not None and self.cancel_requested():
            raise Cancelled("cancelled by the user: nothing was written")

    def stage(self, stage: str) -> Progress:
        """A `(done, total, label)` callback for library functions that take one (merge, preview)."""
        self._started.pop(stage, None)
        self.step(stage, 0, 1)

        def progress(done: int, total: int, label: str = "") -> None:
            self.step(stage, done, total, label)

        return progress


def format_eta(seconds: float | None) -> str:
    """'about 12 s left' / 'about 3 min left' / '' (unknown)."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"
