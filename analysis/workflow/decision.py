"""The decision view: the numbers that decide a merge, built once from evidence records and shown everywhere.

The Merge page, a proposal (which freezes it into its evidence as `decision`), the Review page and both
report formats show the same table, one row per (method, task):

- **measured retention**: merged score / the own adapter's score on the task's data.
  - exact match: merged accuracy / own accuracy. Its 95% interval is the Wilson score interval of the merged
    accuracy (k correct of n rows) divided by the own accuracy, which is taken as fixed (it is measured on the
    same rows; its own sampling noise is not in the interval).
  - answer NLL: (NLL_base - NLL_merged) / (NLL_base - NLL_own), the share of the own adapter's NLL gain over
    the base model that the merge keeps (1: all, 0: none, < 0: worse than the base). No interval: the NLL is
    pooled over the task's answer tokens and per-row values are not stored.
  - undefined (no verdict) where the own adapter scores 0, does not improve on the base (NLL), or no input
    adapter owns the task.
- **predicted retention** beside it, when the evidence carries one (`tasks[i]["predicted_retention"]`:
  {value, low, high, basis, spearman_heldout, mae_heldout, measured_on}); "no estimate" otherwise.
- **the bar** the user set and the verdict: pass when retention >= bar, fail below it; marked unsure when
  the 95% interval reaches across the bar (more rows would be needed to be sure).
- **the general-text check**: every task of generic text (data rows of kind `text`, scored by NLL): the merged
  adapter's NLL against the bare base model's; pass when it is at most (1 + tolerance) x the base's.
- **whose model, whose data**: the model identity line and one line per data file.

Plain JSON in and out, no torch: the review store and the reports read it.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any, Mapping

from analysis.workflow.evidence import data_lines, model_line

DEFAULT_BAR = 0.9
DEFAULT_TOLERANCE = 0.05  # relative NLL increase on generic text that still passes
Z95 = 1.959963984540054
INTERVAL = ("95% Wilson score interval of the merged accuracy (k of n rows), divided by the own adapter's "
            "accuracy taken as fixed")
NLL_RETENTION = ("NLL retention = (NLL_base - NLL_merged) / (NLL_base - NLL_own): the share of the own adapter's "
                 "NLL gain over the base model that the merge keeps; no interval (pooled over answer tokens)")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n (Wilson 1927); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class RetentionRow:
    """One (method, task, metric): what the merge keeps of the task, against the bar."""

    method: str
    task: str
    metric: str  # "exact" | "nll"
    n: int | None
    merged: float | None
    own: float | None
    base: float | None
    own_adapter: str | None
    retention: float | None
    low: float | None
    high: float | None
    predicted: dict[str, Any] | None
    verdict: str  # "pass" | "fail" | "undefined"
    sure: bool  # the interval lies on one side of the bar (always True without an interval)
    note: str = ""


@dataclass(frozen=True)
class TextCheck:
    """The merged adapter's NLL on generic text against the base model's."""

    method: str
    task: str
    n: int | None
    merged: float | None
    base: float | None
    change: float | None  # merged / base - 1
    verdict: str  # "pass" | "fail" | "undefined"


@dataclass(frozen=True)
class Decision:
    """The decision table of one or more merges (one method each) measured on one model and data."""

    bar: float
    tolerance: float
    rows: tuple[RetentionRow, ...]
    text: tuple[TextCheck, ...]
    model: tuple[str, ...]
    data: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    interval: str = INTERVAL
    nll_retention: str = NLL_RETENTION
    methods: tuple[str, ...] = field(default=())

    @property
    def measured(self) -> bool:
        return bool(self.rows or self.text)

    def passed(self, method: str | None = None) -> bool | None:
        """True when every defined row and text check of `method` (or of all) passes; None when none is defined."""
        verdicts = [r.verdict for r in self.rows if method in (None, r.method)]
        verdicts += [t.verdict for t in self.text if method in (None, t.method)]
        defined = [v for v in verdicts if v != "undefined"]
        return None if not defined else all(v == "pass" for v in defined)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        """A frozen decision (as a proposal stores it); unknown keys are ignored, so later versions still read."""
        rows = tuple(RetentionRow(**_known(RetentionRow, r)) for r in data.get("rows") or [] if isinstance(r, Mapping))
        text = tuple(TextCheck(**_known(TextCheck, t)) for t in data.get("text") or [] if isinstance(t, Mapping))
        return cls(bar=float(data.get("bar", DEFAULT_BAR)), tolerance=float(data.get("tolerance", DEFAULT_TOLERANCE)),
                   rows=rows, text=text, model=tuple(data.get("model") or ()), data=tuple(data.get("data") or ()),
                   warnings=tuple(data.get("warnings") or ()), interval=str(data.get("interval") or INTERVAL),
                   nll_retention=str(data.get("nll_retention") or NLL_RETENTION),
                   methods=tuple(data.get("methods") or ()))


def _known(cls: type, row: Mapping[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    out = {k: v for k, v in row.items() if k in names}
    for k, f in names.items():  # a field an older record lacks
        out.setdefault(k, None if f.default is MISSING else f.default)
    return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value) else None


def _text_tasks(measured: Mapping[str, Any]) -> set[str]:
    return {str(d.get("task")) for d in measured.get("data") or []
            if isinstance(d, Mapping) and d.get("kind") == "text"}


def _owner(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The input whose own task this row is: `own` (index) when recorded, else the input named like the task."""
    inputs = [i for i in row.get("inputs") or [] if isinstance(i, Mapping)]
    own = row.get("own")
    if isinstance(own, int) and not isinstance(own, bool):
        return next((i for i in inputs if i.get("index") == own), None)
    if "own" in row:  # recorded as None: no input owns the task
        return None
    return next((i for i in inputs if str(i.get("name")) == str(row.get("task"))), None)


def _predicted(evidence: Mapping[str, Any], index: Any) -> dict[str, Any] | None:
    tasks = evidence.get("tasks")
    if not isinstance(tasks, list):
        return None
    for t in tasks:
        if isinstance(t, Mapping) and t.get("index") == index:
            p = t.get("predicted_retention")
            return dict(p) if isinstance(p, Mapping) and _num(p.get("value")) is not None else None
    return None


def _verdict(retention: float | None, low: float | None, high: float | None, bar: float) -> tuple[str, bool]:
    if retention is None:
        return "undefined", True
    verdict = "pass" if retention >= bar else "fail"
    sure = low is None or high is None or (low >= bar if verdict == "pass" else high < bar)
    return verdict, sure


def retention_row(method: str, row: Mapping[str, Any], evidence: Mapping[str, Any], bar: float) -> RetentionRow:
    """One measured row as retention against the bar (see the module docstring for the definitions)."""
    metric, n = str(row.get("metric")), row.get("n")
    merged, base = _num(row.get("merged")), _num(row.get("base"))
    owner = _owner(row)
    own = _num(owner.get("value")) if owner else None
    ret = low = high = None
    note = ""
    if owner is None:
        note = "no input adapter owns this task: no retention"
    elif merged is None or own is None:
        note = "not measured"
    elif metric == "exact":
        if own <= 0:
            note = "the own adapter scores 0: retention undefined"
        else:
            ret = merged / own
            if isinstance(n, int) and n > 0:
                lo, hi = wilson(round(merged * n), n)
                low, high = lo / own, hi / own
    elif base is None or base - own <= 0:
        note = "the own adapter does not improve on the base: nothing to keep"
    else:
        ret = (base - merged) / (base - own)
    verdict, sure = _verdict(ret, low, high, bar)
    return RetentionRow(method=method, task=str(row.get("task")), metric=metric,
                        n=n if isinstance(n, int) else None, merged=merged, own=own, base=base,
                        own_adapter=str(owner.get("name")) if owner else None, retention=ret, low=low, high=high,
                        predicted=_predicted(evidence, owner.get("index")) if owner else None, verdict=verdict,
                        sure=sure, note=note)


def text_check(method: str, row: Mapping[str, Any], tolerance: float) -> TextCheck:
    merged, base = _num(row.get("merged")), _num(row.get("base"))
    change = merged / base - 1 if merged is not None and base else None
    verdict = "undefined" if change is None else ("pass" if change <= tolerance + 1e-12 else "fail")
    n = row.get("n")
    return TextCheck(method=method, task=str(row.get("task")), n=n if isinstance(n, int) else None,
                     merged=merged, base=base, change=change, verdict=verdict)


def decision_table(evidence: Mapping[str, Mapping[str, Any]], *, bar: float = DEFAULT_BAR,
                   tolerance: float = DEFAULT_TOLERANCE) -> Decision:
    """The decision table of `{method: evidence record}` (each with its `measured` block, or none yet).

    A `text` task (generic text, NLL) becomes a general-text check; every other measured row a retention row.
    """
    rows: list[RetentionRow] = []
    text: list[TextCheck] = []
    model: list[str] = []
    data: list[str] = []
    warnings: list[str] = []
    for method, ev in evidence.items():
        measured = ev.get("measured") if isinstance(ev, Mapping) else None
        if not isinstance(measured, Mapping):
            continue
        generic = _text_tasks(measured)
        for r in measured.get("rows") or []:
            if not isinstance(r, Mapping):
                continue
            if str(r.get("task")) in generic and r.get("metric") == "nll":
                text.append(text_check(method, r, tolerance))
            else:
                rows.append(retention_row(method, r, ev, bar))
        for line in [model_line(measured) or "measured on an unnamed model"]:
            model += [line] if line not in model else []
        data += [d for d in data_lines(measured) if d not in data]
        warnings += [str(w) for w in measured.get("warnings") or [] if str(w) not in warnings]
    return Decision(bar=float(bar), tolerance=float(tolerance), rows=tuple(rows), text=tuple(text),
                    model=tuple(model), data=tuple(data), warnings=tuple(warnings), methods=tuple(evidence))


def frozen_decision(evidence: Mapping[str, Any] | None) -> tuple[Decision | None, bool]:
    """(the decision a proposal froze, True), else (one built from its measured rows at the default bar, False),
    else (None, False) when nothing was measured."""
    if not isinstance(evidence, Mapping):
        return None, False
    stored = evidence.get("decision")
    if isinstance(stored, Mapping):
        return Decision.from_dict(stored), True
    built = decision_table({str(evidence.get("method") or "merge"): evidence})
    return (built, False) if built.measured else (None, False)


# --- one rendering, shared by the app and both report formats --------------------------------------------

RETENTION_HEADER = ("method", "task", "metric", "n", "merged", "own adapter", "base", "retention [95% CI]",
                    "predicted", "bar", "verdict")
TEXT_HEADER = ("method", "text task", "n", "merged NLL", "base NLL", "change", "tolerance", "verdict")


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _verdict_text(verdict: str, sure: bool = True) -> str:
    return {"pass": "PASS", "fail": "FAIL"}.get(verdict, "no verdict") + ("" if sure else " (unsure)")


def retention_cell(row: RetentionRow) -> str:
    if row.retention is None:
        return "— (" + (row.note or "undefined") + ")"
    if row.low is None or row.high is None:
        return f"{row.retention:.3f} (no interval)"
    return f"{row.retention:.3f} [{row.low:.3f}, {row.high:.3f}]"


def predicted_cell(predicted: Mapping[str, Any] | None) -> str:
    if not predicted:
        return "no estimate"
    low, high = _num(predicted.get("low")), _num(predicted.get("high"))
    span = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{float(predicted['value']):.3f}{span}"


def retention_rows(decision: Decision) -> list[list[str]]:
    """The retention table as text cells (RETENTION_HEADER), one row per (method, task, metric)."""
    return [[r.method, r.task, r.metric, "—" if r.n is None else str(r.n), _f(r.merged),
             f"{r.own_adapter}: {_f(r.own)}" if r.own_adapter else "—", _f(r.base), retention_cell(r),
             predicted_cell(r.predicted), f">= {decision.bar:g}", _verdict_text(r.verdict, r.sure)]
            for r in decision.rows]


def text_rows(decision: Decision) -> list[list[str]]:
    """The general-text checks as text cells (TEXT_HEADER)."""
    return [[t.method, t.task, "—" if t.n is None else str(t.n), _f(t.merged), _f(t.base),
             "—" if t.change is None else f"{t.change:+.1%}", f"<= +{decision.tolerance:.0%}", _verdict_text(t.verdict)]
            for t in decision.text]


def summary_line(decision: Decision, method: str | None = None) -> str:
    """One sentence: how many tasks pass the bar, and the general-text check."""
    rows = [r for r in decision.rows if method in (None, r.method)]
    text = [t for t in decision.text if method in (None, t.method)]
    defined = [r for r in rows if r.verdict != "undefined"]
    passed = sum(r.verdict == "pass" for r in defined)
    unsure = sum(not r.sure for r in defined)
    who = f"{method}: " if method else ""
    one_metric = len({(r.method, r.task) for r in defined}) == len(defined)
    unit = "task(s)" if one_metric else "task × metric row(s)"  # a task scored by exact match and NLL: two rows
    line = f"{who}{passed} of {len(defined)} measured {unit} keep >= {decision.bar:g} of their own adapter's score"
    if unsure:
        line += f" ({unsure} unsure: the 95% interval reaches across the bar)"
    if len(rows) > len(defined):
        line += f"; {len(rows) - len(defined)} without a defined retention"
    if text:
        ok = sum(t.verdict == "pass" for t in text)
        line += f"; general text: {ok} of {len(text)} within +{decision.tolerance:.0%} of the base NLL"
    else:
        line += "; no general-text check (add a text task: rows {\"text\": ...}, metric nll)"
    return line


def notes(decision: Decision) -> list[str]:
    """The lines under the table: definitions, the predictions' track record, model and data."""
    lines = [f"exact: retention = merged accuracy / own adapter's accuracy; interval: {decision.interval}.",
             f"nll: {decision.nll_retention}.",
             "verdict: PASS when retention >= the bar; (unsure) when the 95% interval reaches across the bar."]
    if decision.text:
        lines.append(f"general text: the merged adapter's NLL on generic text vs the base model's; PASS when at "
                     f"most {decision.tolerance:.0%} above it.")
    seen: list[str] = []
    for r in decision.rows:
        p = r.predicted
        if not p:
            continue
        track = (f"predicted ({p.get('basis') or 'estimate'}): held-out Spearman {_f(_num(p.get('spearman_heldout')), 2)}"
                 f", MAE {_f(_num(p.get('mae_heldout')))}, on {p.get('measured_on') or 'an unnamed set'}")
        seen += [track] if track not in seen else []
    lines += seen or ["predicted: no estimate in this evidence (no calibrated predictor was available)."]
    lines += list(decision.model) + [f"data: {d}" for d in decision.data]
    lines += [f"warning: {w}" for w in decision.warnings]
    return lines
