"""Real task evaluation on the sample base model: exact match under one fixed protocol.

The protocol (also written in `sample_adapters/README.md`, and used by every evaluator here, in the
build script and in the tests): the prompt is fed as raw text (no chat template), left-padded in
batches, decoded greedily for at most 32 new tokens; the completion is cut at its first newline,
stripped, and must equal the task's `answer` exactly. Generation stops early once every sequence
in a batch has produced a newline: that changes speed, never the result.

Adapters are evaluated without PEFT: `evaluate_deltas` adds each module's dense update to the base
weight in memory and always puts the saved original weights back (a copy, not a subtraction, so the
restore is bitwise exact even in float32).
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.errors import AtlasError, IncompatibleAdaptersError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent.parent / "sample_adapters" / "tasks"
MAX_NEW_TOKENS = 32
DEFAULT_BATCH_SIZE = 32
N_SHOWN_EXAMPLES = 8

Progress = Callable[[int, int, str], None]  # (done, total, label): called after each batch


# ---------------------------------------------------------------- tasks

def list_tasks() -> list[str]:
    """Names of the sample tasks that have an eval split on disk."""
    if not TASKS_DIR.is_dir():
        return []
    return sorted(p.name for p in TASKS_DIR.iterdir() if (p / "eval.jsonl").is_file())


def load_task(task: str, split: str = "eval") -> list[dict[str, str]]:
    """Rows `{"prompt", "answer"}` of one task split."""
    path = TASKS_DIR / task / f"{split}.jsonl"
    if not path.is_file():
        raise AtlasError(f"{path}: no such task split (known tasks: {', '.join(list_tasks()) or 'none'})")
    rows: list[dict[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
                raise AtlasError(f"{path}:{lineno}: expected an object with string 'prompt' and 'answer'")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- the protocol

def clean_completion(text: str) -> str:
    """The protocol's answer: text up to the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


@lru_cache(maxsize=4)
def _newline_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of every token whose text contains a newline (for the early stop)."""
    ids = set()
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]):
            ids.add(i)
    return frozenset(ids)


class _AllHaveNewline:
    """Stopping criterion: a sequence is done once it has produced a newline token."""

    def __init__(self, newline_ids: frozenset[int], prompt_len: int):
        self.ids = torch.tensor(sorted(newline_ids))  # (k,)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_len:]  # (b, t_new)
        return torch.isin(new, self.ids).any(dim=1)  # (b,)


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *,
                     batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                     label: str = "") -> list[str]:
    """Greedy completions of `prompts` under the protocol, already cut and stripped."""
    from transformers import GenerationConfig, StoppingCriteriaList

    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                              pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    newline_ids = _newline_token_ids(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = enc["input_ids"].shape[1]  # left padded: every prompt ends at prompt_len
        stop = StoppingCriteriaList([_AllHaveNewline(newline_ids, prompt_len)])
        seqs = model.generate(**enc, generation_config=config, stopping_criteria=stop)  # (b, prompt_len + t)
        texts = tokenizer.batch_decode(seqs[:, prompt_len:], skip_special_tokens=True)
        out.extend(clean_completion(t) for t in texts)
        if progress is not None:
            progress(min(start + batch_size, len(prompts)), len(prompts), label)
    return out


def score_rows(rows: Sequence[Mapping[str, str]], predictions: Sequence[str],
               n_examples: int = N_SHOWN_EXAMPLES) -> dict[str, Any]:
    """Exact-match accuracy and a few examples (mistakes first, so they are visible)."""
    hits = [p == r["answer"] for r, p in zip(rows, predictions)]
    examples = [{"prompt": r["prompt"], "answer": r["answer"], "prediction": p, "correct": h}
                for r, p, h in zip(rows, predictions, hits)]
    examples.sort(key=lambda e: e["correct"])  # stable: wrong ones first, then file order
    n = len(rows)
    return {"accuracy": (sum(hits) / n) if n else 0.0, "n": n, "correct": int(sum(hits)),
            "examples": examples[:n_examples]}


def evaluate_model(model: Any, tokenizer: Any, tasks: Sequence[str], *, limit: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                   split: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the protocol for each task on `model` as it is (base, PEFT-wrapped or patched)."""
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        rows = load_task(task, split)[:limit] if limit else load_task(task, split)
        preds = generate_answers(model, tokenizer, [r["prompt"] for r in rows],
                                 batch_size=batch_size, progress=progress, label=task)
        results[task] = score_rows(rows, preds)
        log.info("%s: %.3f (%d/%d)", task, results[task]["accuracy"], results[task]["correct"], len(rows))
    return results


# ---------------------------------------------------------------- deltas on the base weights

def _target_update(delta: Delta, weight: torch.Tensor, name: str) -> torch.Tensor:
    """The delta in the layout of `weight`, or IncompatibleAdaptersError naming the module."""
    upd = delta.dense(torch.float64)  # (n_out, n_in)
    if delta.fan_in_fan_out or delta.kind == "embedding":
        upd = upd.T  # the weight is stored (in, out)
    if tuple(upd.shape) != tuple(weight.shape):
        if upd.numel() == weight.numel() and weight.dim() > 2:
            upd = upd.reshape(weight.shape)  # conv: (out, in * kh * kw) -> (out, in, kh, kw)
        else:
            raise IncompatibleAdaptersError(
                f"module {name}: delta shape {tuple(delta.shape)} does not fit base weight {tuple(weight.shape)}")
    return upd.to(weight.dtype)


@contextmanager
def applied_deltas(model: Any, deltas: Mapping[str, Delta]) -> Iterator[Any]:
    """Temporarily add each delta to its module's weight; the saved originals are always copied back.

    Every module is checked before any weight is touched, so a bad adapter leaves the model as it was.
    """
    modules = dict(model.named_modules())
    updates: dict[str, torch.Tensor] = {}
    for name, delta in deltas.items():
        mod = modules.get(name)
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise IncompatibleAdaptersError(f"module {name}: not found in the base model (or has no weight)")
        updates[name] = _target_update(delta, weight, name)
    saved = {name: modules[name].weight.detach().clone() for name in updates}
    try:
        with torch.no_grad():
            for name, upd in updates.items():
                modules[name].weight.add_(upd)
        yield model
    finally:
        with torch.no_grad():
            for name, orig in saved.items():
                modules[name].weight.copy_(orig)


def evaluate_deltas(model: Any, tokenizer: Any, deltas: Mapping[str, Delta], tasks: Sequence[str], *,
                    limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy per task of the base plus `deltas` ({canonical module name: delta}); weights restored after."""
    with applied_deltas(model, deltas):
        return evaluate_model(model, tokenizer, tasks, limit=limit, batch_size=batch_size, progress=progress)


def evaluate_adapter(adapter: Adapter, tasks: Sequence[str] | None = None, limit: int | None = None, *,
                     batch_size: int = DEFAULT_BATCH_SIZE,
                     progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Load the sample base (cached) and evaluate one adapter on `tasks` (default: every sample task)."""
    from analysis.base_model import load_base_model

    model, tokenizer = load_base_model()
    return evaluate_deltas(model, tokenizer, adapter.modules, list(tasks or list_tasks()),
                           limit=limit, batch_size=batch_size, progress=progress)


def evaluate_base(tasks: Sequence[str] | None = None, limit: int | None = None, *,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """The base model alone on `tasks`: the floor every adapter is compared with."""
    from analysis.base_model import load_base_model

    model, tokenizer = load_base_model()
    return evaluate_model(model, tokenizer, list(tasks or list_tasks()), limit=limit,
                          batch_size=batch_size, progress=progress)
