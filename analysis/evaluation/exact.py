"""Exact match by greedy generation: the sample protocol, for any rows.

The prompt is fed as text without added special tokens, left-padded in batches, decoded greedily for at
most 32 new tokens (more when an expected answer is longer); the completion is cut at its first newline
(when the expected answer is one line), stripped, and must equal the expected answer exactly. Generation
stops early once every sequence in a batch has produced a newline (one-line answers only): that changes
speed, never the result.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

MAX_NEW_TOKENS = 32
DEFAULT_BATCH_SIZE = 32
N_SHOWN_EXAMPLES = 8

Progress = Callable[[int, int, str], None]  # (done, total, label): called after each batch


def clean_completion(text: str, multiline: bool = False) -> str:
    """The protocol's answer: text up to the first newline (one-line answers), stripped."""
    return text.strip() if multiline else text.split("\n", 1)[0].strip()


@lru_cache(maxsize=4)
def _newline_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of every token whose text contains a newline (for the early stop)."""
    return frozenset(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))


class _AllHaveNewline:
    """Stopping criterion: a sequence is done once it has produced a newline token."""

    def __init__(self, newline_ids: frozenset[int], prompt_len: int, device: torch.device):
        self.ids = torch.tensor(sorted(newline_ids), device=device)  # (k,)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_len:]  # (b, t_new)
        return torch.isin(new, self.ids).any(dim=1)  # (b,)


def max_new_tokens(tokenizer: Any, expected: Sequence[str]) -> int:
    """32 (the sample protocol), or the longest expected answer's token count plus 8 when it exceeds 32."""
    longest = max((len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected), default=0)
    return MAX_NEW_TOKENS if longest <= MAX_NEW_TOKENS else longest + 8


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                     progress: Progress | None = None, label: str = "", multiline: bool = False,
                     new_tokens: int = MAX_NEW_TOKENS, raw: bool = False) -> list[str]:
    """Greedy completions of `prompts` under the protocol, already cut and stripped (`raw`: cut at the first
    newline but not stripped, the text exactly as written: what `analysis.forecast.agreement_hits` re-checks)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    device = next(model.parameters()).device
    newline_ids = None if multiline else _newline_token_ids(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        prompt_len = enc["input_ids"].shape[1]  # left padded: every prompt ends at prompt_len
        stop = StoppingCriteriaList([_AllHaveNewline(newline_ids, prompt_len, device)] if newline_ids else [])
        seqs = model.generate(**enc, generation_config=config, stopping_criteria=stop)  # (b, prompt_len + t)
        texts = tokenizer.batch_decode(seqs[:, prompt_len:], skip_special_tokens=True)
        out.extend(t.split("\n", 1)[0] if raw else clean_completion(t, multiline) for t in texts)
        if progress is not None:
            progress(min(start + batch_size, len(prompts)), len(prompts), label)
    return out


def score_predictions(prompts: Sequence[str], expected: Sequence[str], predictions: Sequence[str],
                      n_examples: int = N_SHOWN_EXAMPLES) -> dict[str, Any]:
    """{accuracy, n, correct, examples}: a few examples, mistakes first so they are visible."""
    hits = [p == e for e, p in zip(expected, predictions)]
    examples = [{"prompt": q, "answer": e, "prediction": p, "correct": h}
                for q, e, p, h in zip(prompts, expected, predictions, hits)]
    examples.sort(key=lambda e: e["correct"])  # stable: wrong ones first, then file order
    n = len(expected)
    return {"accuracy": (sum(hits) / n) if n else 0.0, "n": n, "correct": int(sum(hits)),
            "examples": examples[:n_examples]}
