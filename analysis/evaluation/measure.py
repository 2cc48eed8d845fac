"""The measure step of the merge workflow (merge -> preview -> export -> measure -> evidence).

`Measure(evaluator)` is the one typed request a face passes to `measure_run(run_merge(...), measure)`; its `run`
scores the adapter written (after any rank truncation), each input adapter on the tasks the data assigns it,
and the bare base, and returns the `measured` block of the evidence record:

    measured: {model: {kind, name, architecture, sha256, revision, files, device, dtype},
               data:  [{task, file, sha256, rows, n, metric, kind}],
               rows:  [{task, metric, n, merged, base, own, inputs: [{index, name, value}]}],
               warnings: [...], protocol: "..."}

`value`/`merged`/`base` are exact-match accuracy (metric "exact", higher is better) or answer NLL in nats
per token (metric "nll", lower is better); an input not assigned the task has value None. `own` is the index
of the input whose own task this is (the data's mapping, else the adapter's folder name), None when no input
owns it (e.g. a generic-text task): the denominator of retention (`analysis.workflow.decision`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.errors import EvaluationDataError
from analysis.evaluation.evaluator import Evaluator, TaskScore

PROTOCOL = ("exact: greedy decoding of the raw prompt (chat rows: the model's chat template), answer cut at the "
            "first newline and stripped, must equal the expected answer; nll: teacher-forced answer NLL in nats "
            "per token, pooled over the task's answer tokens")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Measure:
    """A request to measure a merge: the evaluator (model x data), and whether inputs and base are scored."""

    evaluator: Evaluator
    inputs: bool = True
    base: bool = True

    def run(self, adapters: Sequence[Adapter], merged: Mapping[str, Delta], *,
            progress: Progress | None = None) -> dict[str, Any]:
        """The `measured` block for the merge `merged` of `adapters` (checked to fit before any work)."""
        ev = self.evaluator
        warnings = ev.check(adapters)
        tasks = ev.tasks
        merged_scores = ev.score(merged, tasks, progress=progress)
        base_scores = ev.score({}, tasks, key="base", progress=progress) if self.base else {}
        own: list[dict[str, TaskScore]] = []
        for a in adapters if self.inputs else ():
            mine = ev.data.for_adapter(a)
            own.append(ev.score(a.modules, mine, key=("adapter", a.sha256), progress=progress) if mine else {})
        return {"model": ev.identity.as_dict(), "data": ev.records(), "rows": measured_rows(
            tasks, ev, merged_scores, base_scores, adapters if self.inputs else [], own),
            "warnings": warnings, "protocol": PROTOCOL}


def _value(scores: Mapping[str, TaskScore], task: str, metric: str) -> float | None:
    s = scores.get(task)
    return s.value(metric) if s is not None else None


def owners(tasks: Sequence[str], ev: Evaluator, adapters: Sequence[Adapter]) -> dict[str, int]:
    """{task: index of the input whose own task it is}; a task no input owns is absent."""
    out: dict[str, int] = {}
    for i, a in enumerate(adapters):
        try:
            mine = ev.data.own_task(a)
        except EvaluationDataError:  # an adapter with no task of its own: it owns nothing
            continue
        if mine in tasks:
            out.setdefault(mine, i)
    return out


def measured_rows(tasks: Sequence[str], ev: Evaluator, merged: Mapping[str, TaskScore],
                  base: Mapping[str, TaskScore], adapters: Sequence[Adapter],
                  own: Sequence[Mapping[str, TaskScore]]) -> list[dict[str, Any]]:
    rows = []
    owner = owners(tasks, ev, adapters)
    for t in tasks:
        for metric in ev.data.get(t).metrics:
            rows.append({"task": t, "metric": metric, "n": merged[t].n, "merged": _value(merged, t, metric),
                         "base": _value(base, t, metric), "own": owner.get(t),
                         "inputs": [{"index": i, "name": a.name, "value": _value(o, t, metric)}
                                    for i, (a, o) in enumerate(zip(adapters, own))]})
    return rows
