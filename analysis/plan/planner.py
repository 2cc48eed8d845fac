"""The merge planner: the fewest adapters that keep every task at `min_retention` of its own adapter.

Steps (data-free unless an evaluator is given):
1. # order: core Jaccard of the inputs (rows, p = 0.1, as the candidate merge uses), average-linkage
   dendrogram with Jaccard as the distance, so the tasks whose cores collide LEAST are joined first (on the
   sample set the one pair that merges well, format_date + text_uppercase, has one of the lowest Jaccards).
2. # capacity: a group is refused when its total rank exceeds the narrowest module's width (the capacity
   floor of `analysis.capacity` becomes positive: overlap is forced by counting).
3. # predict: every candidate method (isolation rows and linear mean, both exactly low rank, so the export
   loses nothing) is merged; predicted retention of a task = the calibrated data-free estimate of
   `analysis.predict` (the same one the merge preview shows). The candidate with the best worst-task prediction
   is tried first.
4. # accept: bottom-up on the dendrogram a node is accepted when both children were and its merge passes:
   without data, every task's predicted retention >= min_retention; with data, every task's MEASURED
   accuracy >= min_retention x its own adapter's accuracy (real evaluation). With an NLL `screen` the
   merge is first scored by teacher-forced answer NLL (no generation): a group in which some task keeps
   less than min_retention of its own adapter's NLL gain over the base model is refused without
   generating; only groups that pass are verified by exact match (own accuracies are measured lazily, for
   the tasks of groups that reach this step). A failing node keeps its
   children apart (the split); then a repair pass tries the remaining singletons in pairs, least Jaccard
   first, while trials are left.
Singletons are the input adapter itself (retention 1 by definition). With data, no returned group has a
task below the bar: acceptance is the only way into a group.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analysis.adapters.model import Adapter, Delta
from analysis.capacity import capacity_floor
from analysis.errors import AtlasError

log = logging.getLogger(__name__)

Evaluate = Callable[[Mapping[str, Delta], Sequence[str]], dict[str, float]]
Merge = Callable[[Sequence[Adapter], str, dict[str, Any]], dict[str, Delta]]
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    # the best pair configuration of bench/results_sample_merge.json (0.985 on format_date + text_uppercase)
    ("isolation", {"granularity": "rows", "p": 0.1, "blend": "mean"}),
    ("linear", {}),
    # every input at full strength (the factors side by side): the means above halve each task's scale
    ("cat", {}),
]
JACCARD_P = 0.1  # core rows per task and module for the ordering (as the isolation candidate)


@dataclass
class Trial:
    """One tried group: its method, predicted and (with data) measured retention, and the verdict."""

    tasks: list[str]
    method: str
    parameters: dict[str, Any]
    predicted: dict[str, float]
    measured: dict[str, float] | None = None
    accuracy: dict[str, float] | None = None
    nll_retention: dict[str, float | None] | None = None
    accepted: bool = False
    reason: str = ""
    members: list[int] = field(default_factory=list)  # input indices, in the order of `tasks`

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("tasks", "members", "method", "parameters", "predicted", "measured",
                                              "accuracy", "nll_retention", "accepted", "reason")}

    def decision(self) -> str:
        """The stderr line of this trial: predicted (and measured) retention per task, then the verdict."""
        text = f"group {'+'.join(self.tasks)} with {self.method}: predicted " + _numbers(self.predicted)
        if self.nll_retention is not None:
            text += "; NLL gain kept " + _numbers({t: v for t, v in self.nll_retention.items() if v is not None})
        if self.measured is not None:
            text += "; measured " + _numbers(self.measured)
        verdict = "accepted" if self.accepted else "refused"
        return f"{text} -> {verdict} ({self.reason})"


def _numbers(values: Mapping[str, float]) -> str:
    """`a 0.97, b 0.91 (worst 0.91)`: retention per task, then the worst."""
    if not values:
        return "-"
    return ", ".join(f"{t} {v:.3f}" for t, v in values.items()) + f" (worst {min(values.values()):.3f})"


@dataclass
class Plan:
    min_retention: float
    tasks: list[str]
    groups: list[Trial]
    jaccard: np.ndarray
    linkage: np.ndarray
    own_accuracy: dict[str, float] | None
    trials: list[Trial] = field(default_factory=list)
    measured_on: dict[str, Any] | None = None  # model identity and data files of the measured numbers
    estimate_basis: str = "data-free"  # the shipped calibration the predictions come from ("outputs": data-light)
    estimate_on: dict[str, Any] | None = None  # the model (and data-light: prompt files) the estimate ran on

    def as_dict(self) -> dict[str, Any]:
        return {"min_retention": self.min_retention, "tasks": self.tasks, "adapters_in": len(self.tasks),
                "adapters_out": len(self.groups), "measured": self.own_accuracy is not None,
                "own_accuracy": self.own_accuracy, "groups": [g.as_dict() for g in self.groups],
                "jaccard": np.round(self.jaccard, 6).tolist(), "linkage": np.round(self.linkage, 6).tolist(),
                "trials": [t.as_dict() for t in self.trials], "measured_on": self.measured_on,
                "estimate": _estimate_record(self.estimate_basis, self.estimate_on)}


def _estimate_record(basis: str = "data-free", computed_on: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What the predicted numbers are and how well they have predicted so far (the shipped calibration)."""
    from analysis.predict import load_calibrations

    cal = load_calibrations().get(basis)
    if cal is None:
        return None
    return {"basis": cal.basis, "spearman_heldout": cal.spearman_heldout, "mae_heldout": cal.mae_heldout,
            "interval_halfwidth": cal.halfwidth, "n_heldout": cal.n_heldout, "measured_on": cal.measured_on,
            "computed_on": computed_on}


def default_merge(adapters: Sequence[Adapter], method: str, params: dict[str, Any]) -> dict[str, Delta]:
    from analysis.merge import merge_adapters

    return merge_adapters(adapters, method, params=params).modules


def predicted_retention(adapters: Sequence[Adapter], merged: Mapping[str, Delta]) -> dict[str, float]:
    """The calibrated data-free estimate per task (`analysis.predict`: the task's best-fitting scale inside the
    merge and what the merge adds that is foreign to it, mapped to expected exact-match retention by the shipped
    calibration, whose held-back track record plan.json records). The merge preview shows the same estimate."""
    from analysis.predict import estimate, task_signals

    out = {}
    for a, signal in zip(adapters, task_signals(adapters, merged)):
        pred = estimate(signal, "data-free")
        if pred is None:
            raise AtlasError("no calibrated retention estimate is shipped (analysis/data/retention_calibration.json): "
                             "pass --data to decide by evaluation")
        out[a.name] = pred.value
    return out


def reach_predictor(reach: Any) -> Callable[[Sequence[Adapter], Mapping[str, Delta]], dict[str, float]]:
    """The planner's data-free `predict` on a loaded model (`analysis.reach.Reach`: the task's best-fitting scale, its
    own adapter's reach and the reach of what the merge adds, on text the base model wrote; no task data)."""
    from analysis.predict import estimate_reach

    def predict(adapters: Sequence[Adapter], merged: Mapping[str, Delta]) -> dict[str, float]:
        out = {}
        for a, signal in zip(adapters, reach.signals(adapters, merged)):
            pred = estimate_reach(signal, {})
            if pred is None:
                raise AtlasError("no calibrated reach estimate is shipped (analysis/data/retention_calibration.json): "
                                 "pass --weights-only")
            out[a.name] = pred.value
        return out

    return predict


def forecast_predictor(forecast: Any) -> Callable[[Sequence[Adapter], Mapping[str, Delta]], dict[str, float]]:
    """The planner's `predict` from an `analysis.forecast.Forecast` (data-light: does the group's merge reproduce each
    task's own answers on its unlabeled prompts); a task without prompts keeps the data-free estimate."""

    def predict(adapters: Sequence[Adapter], merged: Mapping[str, Delta]) -> dict[str, float]:
        light = forecast.run(adapters, merged)
        free = predicted_retention(adapters, merged) if any(p is None for p in light) else {}
        return {a.name: (p.value if p is not None else free[a.name]) for a, p in zip(adapters, light)}

    return predict


def retention(acc: Mapping[str, float], own: Mapping[str, float]) -> dict[str, float]:
    """acc / own per task; a task its own adapter cannot do (own = 0) has nothing to lose (1.0)."""
    return {t: (acc[t] / own[t] if own[t] > 0 else 1.0) for t in acc}


def dendrogram(jaccard: np.ndarray) -> np.ndarray:
    """scipy average-linkage matrix (N-1, 4) with Jaccard as the distance: least-overlapping cores join first."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    n = jaccard.shape[0]
    if n < 2:
        return np.zeros((0, 4))
    d = np.array(jaccard, dtype=float)
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method="average")


def capacity_ok(adapters: Sequence[Adapter]) -> bool:
    """False when the group's ranks cannot fit side by side in its narrowest module (capacity floor > 0)."""
    ranks = [d.rank for a in adapters for d in a.modules.values()]
    width = min(min(d.shape) for a in adapters for d in a.modules.values())
    r = float(np.mean(ranks)) if ranks else 0.0
    return capacity_floor(len(adapters), r, width) <= 0.0


class Planner:
    """`plan(adapters)` -> Plan. `evaluate(deltas, tasks)` gives real accuracy; without it the plan is data-free."""

    def __init__(self, min_retention: float = 0.9, *, evaluate: Evaluate | None = None, screen: Evaluate | None = None,
                 merge: Merge = default_merge,
                 predict: Callable[[Sequence[Adapter], Mapping[str, Delta]], dict[str, float]] = predicted_retention,
                 candidates: Sequence[tuple[str, dict[str, Any]]] = tuple(CANDIDATES), max_trials: int = 20) -> None:
        if not 0.0 < min_retention <= 1.0:
            raise AtlasError(f"--min-retention {min_retention}: expected a number in (0, 1]")
        self.min_retention, self.evaluate, self.merge, self.predict = min_retention, evaluate, merge, predict
        self.screen = screen if evaluate is not None else None  # answer NLL (lower is better) before exact match
        self.candidates, self.max_trials = list(candidates), max_trials
        self.trials: list[Trial] = []
        self.own: dict[str, float] | None = None
        self.own_nll: dict[str, float] = {}
        self.base_nll: dict[str, float] = {}
        self._modules: dict[str, Mapping[str, Delta]] = {}

    def _own(self, names: Sequence[str]) -> dict[str, float]:
        """Own accuracy of `names`, measured once each (lazily: only for tasks that reach exact match)."""
        assert self.evaluate is not None and self.own is not None
        for n in names:
            if n not in self.own:
                self.own[n] = self.evaluate(self._modules[n], [n])[n]
        return {n: self.own[n] for n in names}

    def _screened_out(self, trial: Trial, merged: Mapping[str, Delta]) -> bool:
        """Score the merge by answer NLL; True (refused, reason set) when a task keeps too little NLL gain."""
        from analysis.evaluation.retention import nll_retention

        assert self.screen is not None
        names = trial.tasks
        ret = nll_retention(self.screen(merged, names), {n: self.own_nll[n] for n in names},
                            {n: self.base_nll[n] for n in names})
        trial.nll_retention = {t: (round(v, 4) if v is not None else None) for t, v in ret.items()}
        low = {t: v for t, v in ret.items() if v is not None and v < self.min_retention}
        if low:
            worst = min(low, key=low.get)  # type: ignore[arg-type]
            trial.reason = f"NLL screen: {worst} keeps {low[worst]:.2f} of its NLL gain"
        return bool(low)

    # ------------------------------------------------------------ one group
    def try_group(self, group: Sequence[Adapter], members: Sequence[int] | None = None) -> Trial | None:
        """Merge, predict and (with data) measure `group` (input indices `members`); the first candidate
        method that passes wins."""
        names = [a.name for a in group]
        index = list(members) if members is not None else list(range(len(group)))
        if not capacity_ok(group):
            self.trials.append(Trial(names, "-", {}, {}, reason="capacity floor > 0", members=index))
            log.info("group %s: refused (capacity floor > 0: ranks do not fit side by side)", "+".join(names))
            return None
        options = []
        for method, params in self.candidates:
            merged = self.merge(group, method, dict(params))
            pred = self.predict(group, merged)
            options.append((min(pred.values()), method, params, merged, pred))
        options.sort(key=lambda o: -o[0])
        for _, method, params, merged, pred in options:
            if len(self.trials) >= self.max_trials:
                return None
            trial = Trial(names, method, dict(params), {t: round(v, 4) for t, v in pred.items()}, members=index)
            self.trials.append(trial)
            if self.evaluate is None:
                trial.accepted = min(pred.values()) >= self.min_retention
                trial.reason = "predicted" if trial.accepted else "predicted retention below the bar"
            elif self.screen is not None and self._screened_out(trial, merged):
                trial.accepted = False
            else:
                trial.accuracy = self.evaluate(merged, names)
                trial.measured = {t: round(v, 4) for t, v in retention(trial.accuracy, self._own(names)).items()}
                trial.accepted = min(trial.measured.values()) >= self.min_retention
                worst = min(trial.measured, key=trial.measured.get)  # type: ignore[arg-type]
                trial.reason = "measured" if trial.accepted else f"{worst} keeps {trial.measured[worst]:.2f}"
            log.info("%s", trial.decision())
            if trial.accepted:
                return trial
        return None

    def singleton(self, a: Adapter, i: int) -> Trial:
        measured = self.own is not None and a.name in self.own
        return Trial([a.name], "none", {}, {a.name: 1.0}, measured={a.name: 1.0} if self.own is not None else None,
                     accuracy={a.name: self.own[a.name]} if measured else None, accepted=True,
                     reason="the adapter itself", members=[i])

    # ------------------------------------------------------------ the partition
    def plan(self, adapters: Sequence[Adapter], *, own_accuracy: Mapping[str, float] | None = None) -> Plan:
        """Partition `adapters`; `own_accuracy` (measured elsewhere by the same evaluator) saves re-measuring."""
        from analysis.consolidate.cores import core_rows, row_jaccard, row_scores

        if len({a.name for a in adapters}) != len(adapters):  # the one naming rule tells them apart
            from analysis.workflow import AdapterSet

            adapters = AdapterSet.from_adapters(adapters).adapters
        names = [a.name for a in adapters]
        self._modules = {a.name: a.modules for a in adapters}
        if self.evaluate is not None:  # own accuracy, the denominator of every retention
            self.own = {n: v for n, v in dict(own_accuracy or {}).items() if n in names}
            if self.screen is None:
                self._own(names)
            else:  # the NLL screen's references: the base model and each adapter on its own task
                self.base_nll = self.screen({}, names)
                self.own_nll = {a.name: self.screen(a.modules, [a.name])[a.name] for a in adapters}
        jac = row_jaccard(core_rows(row_scores(adapters, "magnitude"), JACCARD_P), len(adapters))
        Z = dendrogram(jac)
        n = len(adapters)
        members: dict[int, list[int]] = {i: [i] for i in range(n)}
        result: dict[int, Trial] = {i: self.singleton(a, i) for i, a in enumerate(adapters)}
        accepted = {i: True for i in range(n)}
        # bottom-up on the dendrogram
        for k, (a, b, _, _) in enumerate(Z):
            a, b, node = int(a), int(b), n + k
            members[node] = members[a] + members[b]
            accepted[node] = False
            if accepted[a] and accepted[b]:
                trial = self.try_group([adapters[i] for i in members[node]], members[node])
                if trial is not None:
                    accepted[node], result[node] = True, trial
        final = self._maximal(n + len(Z) - 1, n, Z, accepted) if n > 1 else [0]
        # repair: pair the remaining singletons, least Jaccard first
        singles = sorted(i for node in final for i in members[node] if len(members[node]) == 1)
        tried = {tuple(sorted(t.members)) for t in self.trials}
        pairs = sorted(((jac[i, j], i, j) for x, i in enumerate(singles) for j in singles[x + 1:]))
        paired: set[int] = set()
        for _, i, j in pairs:
            if i in paired or j in paired or (i, j) in tried:
                continue
            if len(self.trials) >= self.max_trials:
                break
            trial = self.try_group([adapters[i], adapters[j]], [i, j])
            if trial is not None:
                paired |= {i, j}
                node = len(members)
                members[node], result[node] = [i, j], trial
                final = [f for f in final if f not in (i, j)] + [node]
        groups = [result[node] for node in sorted(final, key=lambda f: min(members[f]))]
        groups = [self.singleton(adapters[g.members[0]], g.members[0]) if len(g.members) == 1 else g for g in groups]
        return Plan(self.min_retention, names, groups, jac, Z, self.own, list(self.trials))

    @staticmethod
    def _maximal(root: int, n: int, Z: np.ndarray, accepted: Mapping[int, bool]) -> list[int]:
        """The highest accepted nodes, from the root down."""
        out, stack = [], [root]
        while stack:
            node = stack.pop()
            if accepted[node]:
                out.append(node)
            else:
                a, b = int(Z[node - n, 0]), int(Z[node - n, 1])
                stack.extend([a, b])
        return out
