"""Rows as (prompt text, scored continuation, expected answer) for one tokenizer.

- prompt/answer: the prompt as raw text; continuation " " + answer + "\\n" (no space when the prompt ends in
  whitespace): the sample adapters' training encoding, and what the exact-match protocol stops on;
- prompt/completion: the completion verbatim;
- chat: prompt = the chat template over every turn but the last, with the generation prompt; the
  continuation is what the template adds for the last (assistant) turn, end-of-turn tokens included;
- text: no prompt; every token after the first is scored (the tokenizer's own special tokens added).
Prompt and continuation are tokenized separately without special tokens (a chat template writes its own),
so the answer tokens are the same whatever precedes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analysis.errors import ModelLoadError
from analysis.evaluation.data import Example


@dataclass(frozen=True)
class Rendered:
    prompt: str
    target: str
    expected: str | None  # the exact-match answer (None for text rows)


def _template(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def render(example: Example, tokenizer: Any, where: str = "") -> Rendered:
    if example.kind == "answer":
        sep = "" if (not example.prompt or example.prompt[-1].isspace()) else " "
        return Rendered(example.prompt, sep + example.answer + "\n", example.answer.strip())
    if example.kind == "completion":
        return Rendered(example.prompt, example.answer, example.answer.strip())
    if example.kind == "text":
        return Rendered("", example.text, None)
    if example.kind == "prompt":  # unlabeled: only its prompt is ever used
        return Rendered(example.prompt, "", None)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"{where}: chat rows need a chat template, and this model's tokenizer has none")
    msgs = [{"role": r, "content": c} for r, c in example.messages]
    prompt = _template(tokenizer, msgs[:-1], True)
    full = _template(tokenizer, msgs, False)
    if not full.startswith(prompt):
        raise ModelLoadError(f"{where}: the chat template does not render the conversation as its prompt followed "
                             "by the answer, so the answer cannot be scored on its own")
    return Rendered(prompt, full[len(prompt):], example.answer.strip())


def encode(example: Example, tokenizer: Any, where: str = "") -> tuple[list[int], int]:
    """(token ids, number of leading ids NOT scored) for the teacher-forced NLL."""
    if example.kind == "text":
        ids = list(tokenizer(example.text)["input_ids"])
        return ids, 1
    r = render(example, tokenizer, where)
    p = list(tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) if r.prompt else []
    t = list(tokenizer(r.target, add_special_tokens=False)["input_ids"])
    if not p:  # nothing to condition the first answer token on: it is not scored
        return t, 1
    return p + t, len(p)
