"""Task data for consolidation: the sample set layout `DIR/<task>/{train,eval}.jsonl`, batches and schedule.

The encoding is the sample adapters' own (`sample_adapters/train.py`): the raw prompt, then " <answer>\\n"
tokenized separately, loss only on the answer tokens and the closing newline, right padding. It is
defined here once; the sample-set build script (`sample_adapters/train.py`) imports them from here.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from analysis.errors import AtlasError

Row = dict[str, str]


def load_rows(data_dir: str | Path, task: str, split: str) -> list[Row]:
    """Rows `{"prompt", "answer"}` of `DIR/<task>/<split>.jsonl`, fully validated (`analysis.evaluation`'s
    reader: a bad row is one AtlasError naming file:line), or one line naming the missing file."""
    from analysis.evaluation.data import read_rows

    path = Path(data_dir) / task / f"{split}.jsonl"
    if not path.is_file():
        raise AtlasError(f"{path}: no such task file (expected DIR/<task>/{split}.jsonl, task = adapter directory "
                         "name)")
    _, rows = read_rows(path)
    for r in rows:
        if r.kind != "answer":
            raise AtlasError(f"{path}:{r.line}: training rows must be prompt/answer objects, found a {r.kind} row")
    return [{"prompt": r.prompt, "answer": r.answer} for r in rows]


def encode_example(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt tokens masked with -100, then the answer and its newline."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(" " + answer + "\n", add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding, so positions are 0..len-1 exactly as in unpadded training."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (b, t)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (b, t)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (b, t)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass(frozen=True)
class Schedule:
    """Linear warmup then cosine decay to 10% of the peak, over the whole step budget (every strategy)."""

    steps: int
    lr: float = 3e-3
    warmup: int = 5

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def stage_steps(steps: int, n_stages: int) -> list[int]:
    """The step budget split as evenly as possible over `n_stages` consecutive stages (earlier get the rest)."""
    base, rest = divmod(steps, n_stages)
    return [base + (1 if i < rest else 0) for i in range(n_stages)]


def split_stages(tasks: Sequence[str], k: int) -> list[list[str]]:
    """`tasks` in their given order cut into min(k, n) consecutive groups as equal as possible (later groups
    take the remainder: ten sorted sample tasks in three give format x3, math x3, text x4)."""
    k = max(1, min(k, len(tasks)))
    sizes = stage_steps(len(tasks), k)[::-1]
    out, start = [], 0
    for n in sizes:
        out.append(list(tasks[start:start + n]))
        start += n
    return out


Example = tuple[list[int], list[int]]
Key = tuple[str, int]  # (task, row index in its train split)


def batch_stream(encoded: dict[str, list[Example]], stages: Sequence[Sequence[str]], budgets: Sequence[int],
                 batch_size: int, seed: int) -> Iterator[tuple[str, list[Example], list[Key]]]:
    """(stage label, batch, its (task, row) keys) for every step: stage k draws `budgets[k]` batches from its
    tasks' pooled rows.

    One stage holding every task is the mixed multi-task stream; several stages are the sequential schedule.
    The pool is reshuffled with `seed` whenever it runs out, so the same seed gives the same batches to every
    arm with the same stages (the pairing the bench's contrasts rely on; the keys let a test check it)."""
    rng = random.Random(seed)
    for tasks, n in zip(stages, budgets):
        pool = [(ex, (t, i)) for t in tasks for i, ex in enumerate(encoded[t])]
        order: list[int] = []
        for _ in range(n):
            if len(order) < batch_size:
                perm = list(range(len(pool)))
                rng.shuffle(perm)
                order.extend(perm)
            idx, order = order[:batch_size], order[batch_size:]
            yield "+".join(tasks), [pool[i][0] for i in idx], [pool[i][1] for i in idx]
