"""A minimal teacher-forced answer NLL per task, the primary (continuous) metric of the consolidation bench.

Same encoding and loss as training (`analysis.consolidate.data.encode_example`: the raw prompt, then
" <answer>\\n", loss on the answer tokens and the closing newline): the number is the mean negative
log-likelihood per answer token over the task's eval rows, so lower is better and 0 is a model certain of
every answer. It runs on whatever the model holds at the time (installed training blocks mid-run, or base
weights with deltas applied by `nll_of_deltas`), which is what lets the bench draw learning curves without
exporting. Kept small and separate so the project's evaluation layer can replace it later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Delta
from analysis.consolidate.data import collate, encode_example, load_rows

log = logging.getLogger(__name__)

Encoded = list[tuple[list[int], list[int]]]


@dataclass(frozen=True)
class TaskNLL:
    """Answer NLL per task on the first `limit` rows (all when None) of `DIR/<task>/<split>.jsonl`."""

    encoded: dict[str, Encoded]
    pad_id: int
    batch_size: int = 32

    @classmethod
    def from_dir(cls, tokenizer: Any, data_dir: str, tasks: Sequence[str], *, limit: int | None = None,
                 split: str = "eval", batch_size: int = 32) -> "TaskNLL":
        enc = {}
        for t in tasks:
            rows = load_rows(data_dir, t, split)
            rows = rows[:limit] if limit else rows
            enc[t] = [encode_example(tokenizer, r["prompt"], r["answer"]) for r in rows]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(enc, int(pad), batch_size)

    def rows(self, task: str) -> int:
        return len(self.encoded[task])

    @torch.no_grad()
    def __call__(self, model: Any, tasks: Sequence[str] | None = None) -> dict[str, float]:
        """{task: mean NLL per answer token} of `model` as it is now (eval mode during the call)."""
        was_training = model.training
        model.eval()
        try:
            return {t: self._task(model, t) for t in (tasks if tasks is not None else list(self.encoded))}
        finally:
            model.train(was_training)

    def _task(self, model: Any, task: str) -> float:
        total, count = 0.0, 0
        rows = self.encoded[task]
        for start in range(0, len(rows), self.batch_size):
            s, n = token_nll(model, collate(rows[start:start + self.batch_size], self.pad_id))
            total, count = total + s, count + n
        return total / max(1, count)


def token_nll(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """(summed NLL over the answer tokens, number of answer tokens) of one collated batch."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state  # (b, t, d)
    target = batch["labels"][:, 1:]  # (b, t-1)
    keep = target != -100  # (b, t-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, vocab)
    loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
    return float(loss), int(keep.sum())


def nll_of_deltas(model: Any, nll: TaskNLL, deltas: Mapping[str, Delta], tasks: Sequence[str] | None = None
                  ) -> dict[str, float]:
    """Answer NLL of base + `deltas` (added to the weights in memory and restored afterwards)."""
    from analysis.evaluate import applied_deltas

    with applied_deltas(model, deltas):
        return nll(model, tasks)
