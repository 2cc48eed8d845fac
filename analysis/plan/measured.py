"""The planner's measurements on a named model and data: exact match and the answer-NLL screen.

The planner speaks of tasks by the inputs' display names; the data names its tasks itself. Each adapter's
own task comes from `TaskSet.own_task` (a mapping file, by path or sha256, else the task named like the
adapter's folder), never from the display name.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.evaluation import Evaluator
from analysis.evaluation.evaluator import Evaluate


def plan_measures(evaluator: Evaluator, adapters: Sequence[Adapter]) -> tuple[Evaluate, Evaluate]:
    """(exact-match accuracy, answer NLL) per input name, each scored on that input's own task."""
    task_of = {a.name: evaluator.data.own_task(a) for a in adapters}

    def exact(deltas: Mapping[str, Delta], names: Sequence[str]) -> dict[str, float]:
        acc = evaluator.accuracy(deltas, list(dict.fromkeys(task_of[n] for n in names)))
        return {n: acc[task_of[n]] for n in names}

    def nll(deltas: Mapping[str, Delta], names: Sequence[str]) -> dict[str, float]:
        out = evaluator.nll(deltas, list(dict.fromkeys(task_of[n] for n in names)))
        return {n: out[task_of[n]] for n in names}

    return exact, nll


def measured_on(evaluator: Evaluator) -> dict[str, Any]:
    """What the plan's measured numbers are of: the model identity and each data file."""
    return {"model": evaluator.identity.as_dict(), "data": evaluator.records()}
