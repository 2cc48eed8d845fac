"""Real accuracy on task data in any directory (the sample layout `DIR/<task>/eval.jsonl`).

Same protocol as `analysis.evaluate` (raw prompt, greedy, first line, exact match; its `generate_answers`
and `score_rows` are reused); only the task directory is a parameter, so `--data DIR` works for any set.
The update is added to the base weights in memory and the saved weights are copied back afterwards.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from analysis.adapters.model import Delta
from analysis.consolidate.data import load_rows

log = logging.getLogger(__name__)

Evaluate = Callable[[Mapping[str, Delta], Sequence[str]], dict[str, float]]  # (deltas, tasks) -> accuracy per task


class TaskEvaluator:
    """Accuracy per task of base + deltas on the first `limit` eval rows of each task in `data_dir`."""

    def __init__(self, model: Any, tokenizer: Any, data_dir: str, *, limit: int | None = None,
                 split: str = "eval", batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.data_dir = model, tokenizer, data_dir
        self.limit, self.split, self.batch_size = limit, split, batch_size
        self.calls = 0

    def rows(self, task: str) -> list[dict[str, str]]:
        rows = load_rows(self.data_dir, task, self.split)
        return rows[:self.limit] if self.limit else rows

    def __call__(self, deltas: Mapping[str, Delta], tasks: Sequence[str]) -> dict[str, float]:
        from analysis.evaluate import applied_deltas, generate_answers, score_rows

        self.calls += 1
        out: dict[str, float] = {}
        with applied_deltas(self.model, deltas):
            for task in tasks:
                rows = self.rows(task)
                preds = generate_answers(self.model, self.tokenizer, [r["prompt"] for r in rows],
                                         batch_size=self.batch_size)
                out[task] = float(score_rows(rows, preds)["accuracy"])
                log.info("%s: %.3f on %d rows", task, out[task], len(rows))
        return out
