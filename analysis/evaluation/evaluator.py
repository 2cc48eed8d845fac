"""The one Evaluator: a loaded model x validated task data x metric, for any set of deltas.

    data = load_data(["my_tasks/"], metric="both")          # read and validated first
    ev = Evaluator(load_model(ModelSpec("models/my-llama")), data)
    warnings = ev.check(adapters)                           # every module fits, before any work
    scores = ev.score(adapter.modules)                      # {task: TaskScore}
    ev.accuracy(deltas, tasks) / ev.nll(deltas, tasks)      # {task: float}: what plan and consolidate call

Every row is rendered and tokenized when the Evaluator is built (a chat row on a model without a chat
template fails then, not halfway through). Deltas are applied in memory and restored bit-exactly.
Scores of a named job (`key`, e.g. an adapter's sha256 or "base") are remembered per task and metric.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.evaluation.data import TaskData
from analysis.evaluation.exact import DEFAULT_BATCH_SIZE, generate_answers, max_new_tokens, score_predictions
from analysis.evaluation.fit import applied_deltas
from analysis.evaluation.model import LoadedModel, ModelIdentity
from analysis.evaluation.nll import pooled, row_nll
from analysis.evaluation.render import encode, render
from analysis.evaluation.tasks import TaskSet

log = logging.getLogger(__name__)
_MODEL_LOCKS: dict[int, threading.Lock] = {}  # one job at a time per loaded model: deltas are applied in place
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The lock every job that applies deltas to `model` in place holds (the app serves several visitors)."""
    with _LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(id(model), threading.Lock())
Progress = Callable[[int, int, str], None]  # (done, total, label)
Evaluate = Callable[[Mapping[str, Delta], Sequence[str]], dict[str, float]]  # (deltas, tasks) -> score per task


@dataclass(frozen=True)
class TaskScore:
    """One task's measurement: exact match (accuracy, correct, examples) and/or answer NLL."""

    task: str
    n: int
    accuracy: float | None = None
    correct: int | None = None
    nll: float | None = None
    perplexity: float | None = None
    tokens: int | None = None
    examples: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)

    def value(self, metric: str) -> float | None:
        return self.accuracy if metric == "exact" else self.nll

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n}
        if self.correct is not None:
            out.update(correct=self.correct, examples=[dict(e) for e in self.examples])
        if self.nll is not None:
            out.update(nll=self.nll, perplexity=self.perplexity, tokens=self.tokens)
        return out


@dataclass(frozen=True)
class _Prepared:
    prompts: tuple[str, ...]
    expected: tuple[str, ...]
    encoded: tuple[tuple[list[int], int], ...]
    multiline: bool
    new_tokens: int


class Evaluator:
    """Scores of base + deltas on every task of `data` with each task's metric; see the module docstring."""

    def __init__(self, model: LoadedModel, data: TaskSet, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.loaded, self.data, self.limit, self.batch_size = model, data, limit, batch_size
        self.calls = 0
        self._memo: dict[tuple[Hashable, str, tuple[str, ...]], TaskScore] = {}
        self._prepared = {t.name: self._prepare(t) for t in data.tasks}

    def share_memo(self, other: "Evaluator") -> None:
        """Remember scores together with `other` (same model and data files; e.g. a task subset of it)."""
        if other.loaded is not self.loaded:
            raise ValueError("share_memo: the evaluators measure different models")
        self._memo = other._memo

    # ------------------------------------------------------------ what is measured on what
    @property
    def identity(self) -> ModelIdentity:
        return self.loaded.identity

    @property
    def tasks(self) -> list[str]:
        return self.data.names

    def records(self) -> list[dict[str, Any]]:
        """Each data file's task, path, sha256, rows, rows evaluated (n) and metric."""
        return self.data.records(self.limit)

    def scored_tokens(self, task: str) -> int:
        """Answer tokens the NLL of `task` is pooled over (rows after `limit`)."""
        return sum(len(ids) - skip for ids, skip in self._prepared[task].encoded)

    def check(self, adapters: Sequence[Adapter]) -> list[str]:
        """Refuse adapters that do not fit the model (one line); return the base-name warnings."""
        warnings = self.loaded.check_fit(adapters)
        for w in warnings:
            log.warning("%s", w)
        return warnings

    def _prepare(self, task: TaskData) -> _Prepared:
        tok = self.loaded.tokenizer
        rows = task.limited(self.limit)
        where = [f"{task.path}:{r.line}" for r in rows]
        encoded = tuple(encode(r, tok, w) for r, w in zip(rows, where))
        if not all(r.has_answer for r in rows):  # text rows: NLL only
            return _Prepared((), (), encoded, False, 0)
        rendered = [render(r, tok, w) for r, w in zip(rows, where)]
        expected = tuple(r.expected or "" for r in rendered)
        return _Prepared(tuple(r.prompt for r in rendered), expected, encoded, any("\n" in e for e in expected),
                         max_new_tokens(tok, expected))

    # ------------------------------------------------------------ measuring
    def _score_task(self, name: str, metrics: Sequence[str], progress: Progress | None) -> TaskScore:
        prep, model, tok = self._prepared[name], self.loaded.model, self.loaded.tokenizer
        out: dict[str, Any] = {"task": name, "n": len(prep.encoded)}
        if "exact" in metrics:
            preds = generate_answers(model, tok, prep.prompts, batch_size=self.batch_size, progress=progress,
                                     label=name, multiline=prep.multiline, new_tokens=prep.new_tokens)
            res = score_predictions(prep.prompts, prep.expected, preds)
            out.update(accuracy=res["accuracy"], correct=res["correct"], examples=tuple(res["examples"]))
        if "nll" in metrics:
            pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            res = pooled(row_nll(model, prep.encoded, pad_id=pad, batch_size=self.batch_size, progress=progress,
                                 label=name))
            out.update(nll=res["nll"], perplexity=res["perplexity"], tokens=res["tokens"])
        return TaskScore(**out)

    def _metrics(self, task: str, asked: Sequence[str] | None) -> tuple[str, ...]:
        """The task's own metrics, or `asked` (exact match only where every row has an answer)."""
        if asked is None:
            return self.data.get(task).metrics
        can_match = bool(self._prepared[task].prompts) or not self._prepared[task].encoded
        return tuple(m for m in ("exact", "nll") if m in asked and (m == "nll" or can_match))

    def score(self, deltas: Mapping[str, Delta], tasks: Sequence[str] | None = None, *,
              metrics: Sequence[str] | None = None, key: Hashable | None = None,
              progress: Progress | None = None) -> dict[str, TaskScore]:
        """{task: TaskScore} of base + `deltas` on `tasks` (default all); `metrics` narrows each task's own
        metrics (e.g. ("nll",) for a fast screen); `key` names the job so its scores are remembered."""
        names = list(tasks) if tasks is not None else self.tasks
        plan = {n: self._metrics(n, metrics) for n in names}
        todo = [n for n in names if plan[n] and (key is None or (key, n, plan[n]) not in self._memo)]
        fresh: dict[str, TaskScore] = {}
        if todo:
            self.calls += 1
            with model_lock(self.loaded.model), applied_deltas(self.loaded.model, deltas):
                for n in todo:
                    fresh[n] = self._score_task(n, plan[n], progress)
                    log.info("%s: %s", n, fresh[n].as_dict() | {"examples": "..."})
            if key is not None:
                self._memo.update({(key, n, plan[n]): s for n, s in fresh.items()})
        return {n: fresh[n] if n in fresh else self._memo[(key, n, plan[n])] for n in names if plan[n]}

    def accuracy(self, deltas: Mapping[str, Delta], tasks: Sequence[str], *, key: Hashable | None = None
                 ) -> dict[str, float]:
        """Exact-match accuracy per task (the `Evaluate` callable of plan and consolidate)."""
        return {t: float(s.accuracy or 0.0) for t, s in self.score(deltas, tasks, metrics=("exact",), key=key).items()}

    def nll(self, deltas: Mapping[str, Delta], tasks: Sequence[str], *, key: Hashable | None = None
            ) -> dict[str, float]:
        """Answer NLL per task (nats per token; lower is better)."""
        return {t: float(s.nll) for t, s in self.score(deltas, tasks, metrics=("nll",), key=key).items()
                if s.nll is not None}

    __call__ = accuracy
