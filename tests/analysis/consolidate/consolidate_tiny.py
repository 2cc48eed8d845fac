"""Tiny tasks for consolidation and planner tests: a character tokenizer, task files and PEFT adapters on
`helpers.tiny.tiny_llama` (hidden 64, 2 layers, vocab 128). Everything builds in well under a second."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from helpers.tiny import save_peft_adapter, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class CharTokenizer:
    """Characters to ids 2..127 (0 pad, 1 eos); enough of the HF tokenizer interface for training and hooks."""

    pad_token_id = 0
    eos_token_id = 1

    def _ids(self, text: str) -> list[int]:
        return [2 + (ord(c) % 126) for c in text]

    def __call__(self, text: Any, *, add_special_tokens: bool = False, return_tensors: str | None = None,
                 padding: bool = False) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self._ids(text)}
        seqs = [self._ids(t) for t in text]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # (b, t)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)  # (b, t)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def write_tasks(root: Path, tasks: list[str], n: int = 24) -> Path:
    for k, task in enumerate(tasks):
        rng = random.Random(k)
        (root / task).mkdir(parents=True, exist_ok=True)
        for split in ("train", "eval"):
            rows = []
            for _ in range(n):
                word = "".join(rng.choice("abcdef") for _ in range(3))
                rows.append({"prompt": f"{task}\nInput: {word}\nOutput:", "answer": word[::-1] if k % 2 else word})
            (root / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_adapters(root: Path, tasks: list[str], rank: int = 4) -> list[Path]:
    paths = []
    for k, task in enumerate(tasks):
        path = root / task
        save_peft_adapter(tiny_llama(), path, seed=10 + k, r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
        paths.append(path)
    return paths
