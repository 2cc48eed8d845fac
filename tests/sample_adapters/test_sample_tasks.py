"""Task files: valid, deterministic (regenerating gives the same bytes), disjoint, big enough, correct."""
from __future__ import annotations

import json
import re

import pytest

from sample_adapters.tasks import CANDIDATES, TASK_NAMES, TASKS_DIR, generate, to_jsonl

pytestmark = pytest.mark.parametrize("task", TASK_NAMES)


def _rows(task: str, split: str) -> list[dict[str, str]]:
    lines = (TASKS_DIR / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_files_are_the_generator_output_byte_for_byte(task: str) -> None:
    splits = generate(task)
    for split in ("train", "eval"):
        on_disk = (TASKS_DIR / task / f"{split}.jsonl").read_bytes()
        assert on_disk == to_jsonl(splits[split]).encode("utf-8"), f"{task}/{split} differs from its generator"
    assert generate(task) == splits  # a second run draws the very same rows


def test_rows_valid_splits_disjoint_and_eval_big_enough(task: str) -> None:
    train, ev = _rows(task, "train"), _rows(task, "eval")
    assert len(ev) >= 64 and len(train) >= 4 * len(ev)
    for r in train + ev:
        assert set(r) == {"prompt", "answer"}
        assert r["prompt"].startswith(CANDIDATES[task].instruction + "\nInput: ")
        assert r["prompt"].endswith("\nOutput:")
        assert r["answer"] and "\n" not in r["answer"] and r["answer"] == r["answer"].strip()
    prompts_train, prompts_eval = {r["prompt"] for r in train}, {r["prompt"] for r in ev}
    assert len(prompts_train) == len(train) and len(prompts_eval) == len(ev)
    assert not prompts_train & prompts_eval


def _solve(task: str, x: str) -> str:
    """An independent solver for each task, written from the instruction, not from the generator."""
    words = x.split()
    if task == "text_first_word":
        return words[0]
    if task == "text_last_word":
        return words[-1]
    if task == "text_reverse_words":
        return " ".join(words[::-1])
    if task == "text_uppercase":
        return x.upper()
    if task == "math_max":
        return str(max(int(w) for w in words))
    if task == "math_add":
        return str(sum(int(w) for w in words))
    if task == "math_count":
        return str(len(words))
    if task == "format_snake":
        return "_".join(w.lower() for w in words)
    y, m, d = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)", x).groups()
    return f"{d}/{m}/{y}" if task == "format_date" else f"{m}/{d}/{y}"


def test_answers_are_correct(task: str) -> None:
    for r in _rows(task, "eval") + _rows(task, "train")[:200]:
        x = r["prompt"].split("\nInput: ", 1)[1].removesuffix("\nOutput:")
        assert _solve(task, x) == r["answer"], r
