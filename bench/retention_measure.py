"""The measuring half of bench/retention_truth.py: exact match and answer NLL of base + deltas on one task."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from analysis.adapters.model import Delta


class Measurer:
    """Sample base, the sample protocol: exact match on the first `em_rows` eval rows, answer NLL (mean over the
    answer tokens and the newline that ends them, teacher-forced) on the first `nll_rows`."""

    def __init__(self, data_dir: str, *, em_rows: int, nll_rows: int) -> None:
        from analysis.base_model import base_record, load_base_model

        self.data_dir, self.em_rows, self.nll_rows = data_dir, em_rows, nll_rows
        self.model, self.tokenizer = load_base_model()
        rec = base_record()
        self.identity = f"sample base {rec.get('file', 'SmolLM2-135M-Instruct GGUF')}"

    def rows(self, task: str, split: str = "eval") -> list[dict[str, str]]:
        from analysis.consolidate.data import load_rows

        return load_rows(self.data_dir, task, split)

    def prompts(self, task: str, n: int) -> list[str]:
        return [r["prompt"] for r in self.rows(task, "train")[:n]]

    def nll(self, rows: list[dict[str, str]]) -> float:
        from analysis.consolidate.data import collate, encode_example

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(rows), 32):
                batch = collate([encode_example(tok, r["prompt"], r["answer"]) for r in rows[start:start + 32]], pad)
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                target = batch["labels"][:, 1:]  # (b, t-1)
                keep = target != -100
                lp = torch.log_softmax(logits[:, :-1][keep].float(), dim=-1)  # (n, vocab)
                total += float(-lp.gather(1, target[keep][:, None]).sum())
                count += int(keep.sum())
        return total / max(1, count)

    def measure(self, deltas: Mapping[str, Delta], task: str) -> dict[str, Any]:
        from analysis.evaluate import applied_deltas, generate_answers, score_rows

        rows = self.rows(task)
        with applied_deltas(self.model, deltas):
            em_rows = rows[:self.em_rows]
            preds = generate_answers(self.model, self.tokenizer, [r["prompt"] for r in em_rows], batch_size=32)
            acc = float(score_rows(em_rows, preds)["accuracy"])
            nll = self.nll(rows[:self.nll_rows])
        return {"accuracy": acc, "nll": nll, "n_em": len(em_rows), "n_nll": min(len(rows), self.nll_rows)}
